"""Request body cap as ASGI middleware: 413 problem+json before a large upload is read.

A declared `Content-Length` over the cap is refused without calling the app. A body without one
(chunked) is counted as it streams; once past the cap the client gets the 413, the app's next
`receive()` raises, and anything the app still tries to send is dropped.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.archives import PROBLEM_TYPE_BASE

PROBLEM_SLUG = "body-too-large"
BODYLESS = frozenset({"GET", "HEAD"})  # no route reads their body: not worth a guard per read


class BodyTooLargeError(Exception):
    """Raised into the app from `receive()` once the body has passed the cap."""


class BodySizeLimit:
    """Refuse request bodies over `max_bytes` on `paths` (and everything below them)."""

    def __init__(self, app: ASGIApp, max_bytes: int, paths: tuple[str, ...] = ("/jobs",)) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in BODYLESS or not self._guards(scope["path"]):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await send_too_large(send, self.max_bytes, declared)
            return
        guard = _Guard(receive, send, self.max_bytes)
        try:
            await self.app(scope, guard.receive, guard.send)
        except Exception:
            if not guard.answered:  # the app's own failure, or one we could not answer
                raise

    def _guards(self, path: str) -> bool:
        return any(path == p or path.startswith(p.rstrip("/") + "/") for p in self.paths)


class _Guard:
    """Wraps one request's receive/send: counts body bytes, answers 413 at most once."""

    def __init__(self, receive: Receive, send: Send, max_bytes: int) -> None:
        self._receive, self._send, self.max_bytes = receive, send, max_bytes
        self.received = 0
        self.started = False  # the app has begun its own response
        self.answered = False  # we have sent the 413

    async def receive(self) -> Message:
        if self.answered:
            raise BodyTooLargeError
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.max_bytes:
                if not self.started:
                    await send_too_large(self._send, self.max_bytes, None)
                    self.answered = True
                raise BodyTooLargeError
        return message

    async def send(self, message: Message) -> None:
        if self.answered:
            return  # the client already has its 413
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


async def send_too_large(send: Send, max_bytes: int, declared: int | None) -> None:
    """Send the 413 problem+json; `Connection: close` so the rest of the body is never read."""
    detail = f"The request body is larger than the {max_bytes:,}-byte limit."
    body: dict[str, object] = {
        "type": PROBLEM_TYPE_BASE + PROBLEM_SLUG,
        "title": "Request body too large",
        "status": 413,
        "detail": detail,
        "max_bytes": max_bytes,
    }
    if declared is not None:
        body["content_length"] = declared
    payload = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(payload)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": payload})

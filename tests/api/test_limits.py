"""BodySizeLimit: a tiny app behind the middleware, driven over HTTP by httpx."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from api.limits import BodySizeLimit

MAX_BYTES = 10_000


def make_app(seen: list[int]) -> BodySizeLimit:
    """An echo app that records how many body bytes it read, wrapped in the middleware."""

    async def echo(request: Request) -> JSONResponse:
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            seen.append(received)
        return JSONResponse({"received": received})

    routes = [Route("/jobs", echo, methods=["POST"]), Route("/other", echo, methods=["POST"])]
    return BodySizeLimit(Starlette(routes=routes), max_bytes=MAX_BYTES)


def post(app: BodySizeLimit, path: str, content: bytes | AsyncIterator[bytes]) -> httpx.Response:
    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post(path, content=content)

    return asyncio.run(send())


async def chunked(total: int, pulled: list[int], size: int = 1_000) -> AsyncIterator[bytes]:
    """`total` bytes in chunks, with no Content-Length; `pulled` counts what was consumed."""
    for _ in range(total // size):
        pulled.append(size)
        yield bytes(size)


def assert_problem_413(response: httpx.Response) -> None:
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == "https://corral.dev/problems/body_too_large"
    assert (body["status"], body["max_bytes"]) == (413, MAX_BYTES)
    assert body["title"] and "10,000-byte" in body["detail"]


def test_limits_content_length_over_the_limit_is_413_before_reading() -> None:
    seen: list[int] = []
    response = post(make_app(seen), "/jobs", bytes(MAX_BYTES + 1))
    assert_problem_413(response)
    assert response.json()["content_length"] == MAX_BYTES + 1
    assert seen == []  # the app never ran


def test_limits_chunked_body_over_the_limit_is_stopped_with_413() -> None:
    seen: list[int] = []
    pulled: list[int] = []
    response = post(make_app(seen), "/jobs", chunked(10 * MAX_BYTES, pulled))
    assert_problem_413(response)
    assert max(seen, default=0) <= MAX_BYTES  # the app never saw bytes past the limit
    assert sum(pulled) < 10 * MAX_BYTES  # and the rest of the body was never read


def test_limits_bodies_under_the_limit_pass_through() -> None:
    seen: list[int] = []
    app = make_app(seen)
    assert post(app, "/jobs", bytes(MAX_BYTES)).json() == {"received": MAX_BYTES}
    response = post(app, "/jobs", chunked(MAX_BYTES, []))
    assert (response.status_code, response.json()) == (200, {"received": MAX_BYTES})


def test_limits_other_paths_are_not_limited() -> None:
    response = post(make_app([]), "/other", bytes(MAX_BYTES + 1))
    assert response.json() == {"received": MAX_BYTES + 1}

"""Request dependencies: settings, a session, the calling key, and the job of the path."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Protocol, TypeVar

from fastapi import Cookie, Depends, Header, Path, Request
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api.errors import ProblemError
from api.key_presence import KeyPresence
from api.seats import Seats
from store import jobs, keys
from store.db import reading
from store.models import Job
from store.settings import Settings

RELEASE = "corral.release_seat"  # session.info key of the request's seat release
READ_METHODS = frozenset({"GET", "HEAD"})  # no route answering these writes to the database


# The dependencies that do no I/O are `async def`: FastAPI runs a plain `def` dependency in the
# thread pool, one thread hop per dependency per request.
async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_session(request: Request) -> AsyncIterator[Session]:
    """One session per request, opened once a database seat is free; routes commit what they change.

    Async so that neither the wait for a seat nor the teardown needs a thread (see api/seats.py).
    """
    seats: Seats = request.app.state.seats
    factory: sessionmaker[Session] = request.app.state.sessions
    read_only = request.method in READ_METHODS
    release = await seats.take()
    session = (reading(factory) if read_only else factory)()
    session.info[RELEASE] = release
    try:
        yield session
    finally:
        if not read_only and session.in_transaction():  # a ROLLBACK round trip: off the loop
            await run_in_threadpool(session.close)
        close_session(session)


def close_session(session: Session) -> None:
    """Close a request's session and free its seat now (a long upload holds neither); event loop only."""
    session.close()  # hands the connection back to the pool (a rollback, if one was open)
    release = session.info.pop(RELEASE, None)
    if release is not None:
        release()


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]


@dataclass(frozen=True)
class Caller:
    """Who is asking: an API key, or anyone when the service runs without keys."""

    key_id: uuid.UUID | None


AuthorizationHeader = Annotated[str | None, Header()]
KeyCookie = Annotated[str | None, Cookie()]


@dataclass(frozen=True)
class CallerLookup:
    """Finds the caller when called: inside a route's own thread-pool call, not one more hop.

    Without any key (and keys not required) everyone is the same anonymous caller. The header
    wins; the `corral_key` cookie (HttpOnly, SameSite=Strict, set by /ui/key) lets the pages and
    their same-origin fetches act with a key.
    """

    session: Session
    settings: Settings
    presence: KeyPresence
    authorization: str | None
    corral_key: str | None

    def __call__(self) -> Caller:
        if not self.settings.require_api_keys and not self.presence.any_keys(self.session):
            return Caller(key_id=None)
        scheme, _, token = (self.authorization or "").partition(" ")
        if self.authorization is None and self.corral_key:
            scheme, token = "bearer", self.corral_key
        plain = token.strip()
        found = keys.find_key(self.session, plain=plain) if scheme.lower() == "bearer" else None
        if found is None:
            raise ProblemError(
                401,
                "unauthorized",
                "Unauthorized",
                "send a valid API key as 'Authorization: Bearer KEY'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return Caller(key_id=found.id)


async def get_caller_lookup(
    request: Request,
    session: SessionDep,
    authorization: AuthorizationHeader = None,
    corral_key: KeyCookie = None,
) -> CallerLookup:
    state = request.app.state  # settings read here: each dependency costs a request ~10 µs
    return CallerLookup(session, state.settings, state.key_presence, authorization, corral_key)


CallerLookupDep = Annotated[CallerLookup, Depends(get_caller_lookup)]


async def get_caller(lookup: CallerLookupDep) -> Caller:
    """The calling key, or 401."""
    return await run_in_threadpool(lookup)


CallerDep = Annotated[Caller, Depends(get_caller)]


class Owned(Protocol):
    @property
    def owner_id(self) -> uuid.UUID | None: ...


OwnedT = TypeVar("OwnedT", bound=Owned)

@dataclass(frozen=True)
class JobLookup:
    """Finds the job of the path, visible to the caller, when called (in the route's thread)."""

    caller: CallerLookup
    job_id: str

    def __call__(self) -> Job:
        return self.read(lambda session, job_id: jobs.get_job(session, job_id=job_id))

    def read(self, fetch: Callable[[Session, uuid.UUID], OwnedT | None]) -> OwnedT:
        """`fetch(session, job_id)`: the job or what a route reads with it, or None; else 404.

        Another key's job is as unknown as none.
        """
        caller = self.caller()
        try:
            parsed = uuid.UUID(self.job_id)
        except ValueError:
            parsed = None
        found = fetch(self.caller.session, parsed) if parsed else None
        if found is None or (caller.key_id is not None and found.owner_id != caller.key_id):
            detail = f"no job with id {self.job_id!r}"
            raise ProblemError(404, "job_not_found", "Job not found", detail)
        return found


async def get_job_lookup(
    job_id: Annotated[str, Path(description="job id (UUID)")], caller: CallerLookupDep
) -> JobLookup:
    return JobLookup(caller, job_id)


JobLookupDep = Annotated[JobLookup, Depends(get_job_lookup)]


async def get_job_or_404(lookup: JobLookupDep) -> Job:
    """The job of the path; another key's job is as unknown as none. Caller and job: one hop."""
    return await run_in_threadpool(lookup)


JobDep = Annotated[Job, Depends(get_job_or_404)]

"""Request dependencies: settings, a session, the calling key, and the job of the path."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Cookie, Depends, Header, Path, Request
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api.errors import ProblemError
from api.seats import Seats
from store import jobs, keys
from store.models import Job
from store.settings import Settings

RELEASE = "corral.release_seat"  # session.info key of the request's seat release


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
    release = await seats.take()
    session = factory()
    session.info[RELEASE] = release
    try:
        yield session
    finally:
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


def get_caller(
    session: SessionDep,
    settings: SettingsDep,
    authorization: AuthorizationHeader = None,
    corral_key: KeyCookie = None,
) -> Caller:
    """The calling key (see `resolve_caller`)."""
    return resolve_caller(session, settings, authorization, corral_key)


def resolve_caller(
    session: Session, settings: Settings, authorization: str | None, corral_key: str | None
) -> Caller:
    """Without any key (and keys not required) everyone is the same anonymous caller.

    The header wins; the `corral_key` cookie (HttpOnly, SameSite=Strict, set by /ui/key) lets
    the pages and their same-origin fetches act with a key.
    """
    if not settings.require_api_keys and not keys.any_keys(session):
        return Caller(key_id=None)
    scheme, _, token = (authorization or "").partition(" ")
    if authorization is None and corral_key:
        scheme, token = "bearer", corral_key
    found = keys.find_key(session, plain=token.strip()) if scheme.lower() == "bearer" else None
    if found is None:
        raise ProblemError(
            401,
            "unauthorized",
            "Unauthorized",
            "send a valid API key as 'Authorization: Bearer KEY'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return Caller(key_id=found.id)


CallerDep = Annotated[Caller, Depends(get_caller)]


async def get_job_or_404(
    job_id: Annotated[str, Path(description="job id (UUID)")],
    session: SessionDep,
    settings: SettingsDep,
    authorization: AuthorizationHeader = None,
    corral_key: KeyCookie = None,
) -> Job:
    """The job of the path, visible to this caller; another key's job is as unknown as none.

    The caller and the job are read in one thread-pool call: each hop costs a request more than
    either query does.
    """
    return await run_in_threadpool(
        _visible_job, session, settings, authorization, corral_key, job_id
    )


def _visible_job(
    session: Session,
    settings: Settings,
    authorization: str | None,
    corral_key: str | None,
    job_id: str,
) -> Job:
    caller = resolve_caller(session, settings, authorization, corral_key)
    try:
        parsed = uuid.UUID(job_id)
    except ValueError:
        parsed = None
    job = jobs.get_job(session, job_id=parsed) if parsed else None
    if job is None or (caller.key_id is not None and job.owner_id != caller.key_id):
        raise ProblemError(404, "job_not_found", "Job not found", f"no job with id {job_id!r}")
    return job


JobDep = Annotated[Job, Depends(get_job_or_404)]

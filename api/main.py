"""`create_app()`: the FastAPI application, built from settings."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from api import errors, methods, openapi
from api.headers import NoSniff
from api.key_presence import KeyPresence
from api.limits import BodySizeLimit
from api.routes import exports, health, jobs, predict, reclusterings, results, ui
from api.seats import Seats
from store import blobs
from store import jobs as job_store
from store.db import make_engine, make_sessionmaker
from store.queue import make_celery
from store.settings import Settings, get_settings

log = logging.getLogger(__name__)

MULTIPART_SLACK = 1024 * 1024  # room for the params field and part headers next to the archive
# threads beyond the database seats: uploads' decoding, file responses, pages, /ready
THREAD_HEADROOM = 20


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app with its engine, session factory and Celery client on `app.state`."""
    settings = settings or get_settings()
    engine = make_engine(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        size_thread_pool(settings)
        sweep_orphans(app, older_than_s=settings.orphan_grace_s)
        yield
        engine.dispose()

    app = FastAPI(
        title="Corral",
        summary="Unsupervised image clustering as a service (MMDC, IMC-SwAV, k-means)",
        version="0.1.0",
        lifespan=lifespan,
        generate_unique_id_function=openapi.operation_id,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = make_sessionmaker(engine)
    app.state.celery = make_celery(settings)
    app.state.predict_slots = asyncio.Semaphore(settings.predict_concurrency)
    app.state.seats = Seats(settings.database_pool_size, settings.database_wait_s)
    app.state.key_presence = KeyPresence()
    errors.install(app)
    app.add_exception_handler(405, methods.method_not_allowed)  # type: ignore[arg-type]
    openapi.install(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes + MULTIPART_SLACK)
    routers = (
        health.router, jobs.router, reclusterings.router, results.router, exports.router, predict.router,
        ui.router,
    )
    for router in routers:
        app.include_router(router)
    app.mount("/ui/static", StaticFiles(packages=[("api", "static")]), name="static")
    app.add_middleware(NoSniff)
    return app


def size_thread_pool(settings: Settings) -> None:
    """More threads than seats, so seated requests always find a thread and others still do."""
    limiter = anyio.to_thread.current_default_thread_limiter()
    limiter.total_tokens = max(limiter.total_tokens, settings.database_pool_size + THREAD_HEADROOM)


def sweep_orphans(app: FastAPI, *, older_than_s: float) -> int:
    """Remove job folders without a job row (an upload cut off by a crash); returns how many."""
    settings: Settings = app.state.settings
    on_disk = blobs.job_ids_on_disk(settings, older_than_s=older_than_s)
    if not on_disk:
        return 0
    try:
        with app.state.sessions() as session:
            known = job_store.existing_job_ids(session, job_ids=on_disk)
    except Exception:  # the database may not be up yet; the next start sweeps
        log.warning("orphan sweep skipped: database unavailable")
        return 0
    orphans = [job_id for job_id in on_disk if job_id not in known]
    for job_id in orphans:
        blobs.delete_job_files(settings, job_id)
    if orphans:
        log.info("removed %d orphaned upload folder(s)", len(orphans))
    return len(orphans)

"""Liveness (/health) and readiness (/ready: database and broker reachable)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, text
from starlette.concurrency import run_in_threadpool

from api.errors import problem_response
from api.schemas import Health, Problem, Readiness
from store import queue

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
async def health() -> Health:  # async: answers even when every thread is busy
    """The process is up."""
    return Health(status="ok")


@router.get(
    "/ready",
    response_model=Readiness,
    responses={
        503: {
            "model": Problem,
            "content": {"application/problem+json": {}},
            "description": "database or broker unreachable",
        }
    },
)
async def ready(request: Request) -> JSONResponse:
    """Database and broker both reachable (else 503)."""
    database = await run_in_threadpool(_database_ok, request.app.state.engine)
    broker = await run_in_threadpool(queue.broker_reachable, request.app.state.settings)
    if database and broker:
        return JSONResponse(Readiness(status="ready", database=True, broker=True).model_dump())
    down = " and ".join(name for name, ok in (("database", database), ("broker", broker)) if not ok)
    return problem_response(
        503,
        "not_ready",
        "Service not ready",
        f"{down} unreachable",
        headers={"Retry-After": "5"},
        database=database,
        broker=broker,
    )


def _database_ok(engine: Engine) -> bool:
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except Exception:  # any failure to reach the database means "not ready"
        return False

"""Many simultaneous clients: every request is answered (a result or a quick 503), none hangs.

The app runs under real uvicorn with its own pooled engine (not the suite's one rolled-back
connection), so the database pool and the thread pool are the ones a deployment has. Before the
fix, 64 concurrent `GET /jobs/{id}` stalled the process and 256 wedged it, `/health` included.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from store import jobs
from store.db import make_engine, make_sessionmaker, transaction
from store.settings import Settings
from tests.conftest import fresh_pg_database, serving

CLIENTS = 256
# Generous: an answer (200 or 503) comes within a few seconds; the old stall waited 30 s for a
# pooled connection and then kept going, so anything near this bound is a hang.
ANSWER_BOUND_S = 20.0


@pytest.fixture
def live_settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """Settings whose database commits for real: a fresh Postgres database or SQLite copy."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    if backend == "sqlite":
        shutil.copy(request.getfixturevalue("sqlite_template"), data_dir / "corral.db")
        yield Settings(data_dir=data_dir, broker_url="filesystem://")
        return
    with fresh_pg_database() as url:
        yield Settings(database_url=url, data_dir=data_dir, broker_url="filesystem://")


@pytest.fixture
def live_job(live_settings: Settings) -> uuid.UUID:
    """One committed job row."""
    engine = make_engine(live_settings)
    job_id = uuid.uuid4()
    with transaction(make_sessionmaker(engine)) as session:
        jobs.create_job(
            session, job_id=job_id, params={"k": 2, "method": "kmeans"}, archive_format="zip",
            archive_entries=0, images=[], skipped=[],
        )
    engine.dispose()
    return job_id


async def _storm(base: str, job_id: uuid.UUID) -> tuple[list[httpx.Response], list[int]]:
    """`CLIENTS` concurrent GET /jobs/{id}, and /health polled on its own client meanwhile."""
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with (
        httpx.AsyncClient(base_url=base, timeout=ANSWER_BOUND_S, limits=limits) as storm,
        httpx.AsyncClient(base_url=base, timeout=ANSWER_BOUND_S) as probe,
    ):
        gets = [asyncio.create_task(storm.get(f"/jobs/{job_id}")) for _ in range(CLIENTS)]
        health = []
        while not all(task.done() for task in gets) or not health:
            health.append((await probe.get("/health")).status_code)
            await asyncio.sleep(0.05)
        return [await task for task in gets], health


def test_concurrent_reads_are_all_answered(live_settings: Settings, live_job: uuid.UUID) -> None:
    from api.main import create_app

    with serving(create_app(live_settings)) as base:
        answers, health = asyncio.run(_storm(base, live_job))
        after = httpx.get(f"{base}/jobs/{live_job}", timeout=ANSWER_BOUND_S)
    statuses = {response.status_code for response in answers}
    assert statuses <= {200, 503}, statuses
    for response in answers:
        if response.status_code == 503:
            assert response.headers["content-type"] == "application/problem+json"
            assert int(response.headers["retry-after"]) > 0
    assert 200 in statuses  # served, not merely refused
    assert health and set(health) == {200}
    assert after.status_code == 200 and after.json()["id"] == str(live_job)


def test_seats_refuse_with_retry_after_once_all_are_taken() -> None:
    from api.errors import ProblemError
    from api.seats import Seats

    async def take_two() -> None:
        seats = Seats(capacity=1, wait_s=0.05)
        release = await seats.take()
        with pytest.raises(ProblemError) as refused:
            await seats.take()
        assert refused.value.status == 503 and refused.value.headers["Retry-After"] == "1"
        release()
        release()  # a second release frees nothing more
        again = await seats.take()
        with pytest.raises(ProblemError):
            await seats.take()
        again()

    asyncio.run(take_two())


def test_a_pool_timeout_is_a_503_problem(live_settings: Settings, live_job: uuid.UUID) -> None:
    """A connection held outside the seats (a stream, an upload) leaves none: 503, not a 500."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    starved = live_settings.model_copy(
        update={"database_pool_size": 1, "database_max_overflow": 0, "database_wait_s": 0.1}
    )
    app = create_app(starved)
    with TestClient(app) as client, app.state.engine.connect():
        response = client.get(f"/jobs/{live_job}")
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "1"
    assert response.json()["type"].endswith("service_busy")

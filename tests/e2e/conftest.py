"""Real Celery worker processes (`python -m commands worker`, what `corral worker` runs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy.orm import Session, sessionmaker

from store import jobs
from store.db import make_engine, make_sessionmaker
from store.models import Job
from store.settings import Settings
from tests.conftest import REDIS_URL, fresh_pg_database

ROOT = Path(__file__).resolve().parents[2]
# A killed worker on this host is found by its pid at once; the heartbeat limit only matters for
# other hosts, so it stays long enough that a loaded machine's slow heartbeat never looks dead.
FAST = {"progress_interval_s": 0.2, "reaper_interval_s": 0.5, "stale_after_s": 30.0}


def worker_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        env[f"CORRAL_{name.upper()}"] = str(value)
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.fixture
def pg_url() -> Iterator[str]:
    """Real workers and the app's own engine commit: each test gets a Postgres database of its
    own, not the suite's shared one, whose rolled-back tests expect it empty."""
    with fresh_pg_database() as url:
        yield url


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each phase's report on the test item, so a fixture's teardown can see a failure."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def start_worker(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[Settings], subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(settings: Settings) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"worker-{len(started)}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "commands", "worker"],
            cwd=ROOT,
            env=worker_env(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:  # the workers' own account goes into the report
        for log in sorted(tmp_path.glob("worker-*.log")):
            tail = log.read_text(errors="replace").splitlines()[-60:]
            print(f"--- {log.name}, last 60 lines ---", *tail, sep="\n")


@pytest.fixture
def e2e_sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(settings)
    yield make_sessionmaker(engine)
    engine.dispose()


def wait_for(
    sessions: sessionmaker[Session],
    job_id: uuid.UUID,
    done: Callable[[Job], bool],
    timeout_s: float = 240,
) -> Job:
    deadline = time.monotonic() + timeout_s
    while True:
        with sessions() as session:
            job = jobs.get_job(session, job_id=job_id)
        assert job is not None
        if done(job):
            return job
        assert time.monotonic() < deadline, f"job stuck in {job.state} (epoch {job.epoch})"
        time.sleep(0.2)


@pytest.fixture
def redis_settings(settings: Settings) -> Iterator[Settings]:
    """Postgres + a real Redis broker on queues of its own, removed after."""
    queue = f"corral-test-{uuid.uuid4().hex[:8]}"
    yield settings.model_copy(
        update={"broker_url": f"{REDIS_URL}/9", "queue_name": queue, "recluster_queue_name": f"{queue}-recluster"}
    )
    client = redis.Redis.from_url(f"{REDIS_URL}/9")
    for key in client.scan_iter(f"*{queue}*"):
        client.delete(key)

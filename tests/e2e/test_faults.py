"""Faults made real: a broker restarted, a database that goes away, an API killed mid-upload,
a worker killed between taking a job's message and claiming it. Nothing is lost or left behind.

Each test runs its own servers (a redis-server, a TCP proxy in front of Postgres, a uvicorn
process); the machine's shared Redis and Postgres are never stopped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import Popen

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from api.main import create_app
from commands.ports import free_port
from store import blobs, queue
from store.models import Image, Job, JobState
from store.settings import Settings
from tests.conftest import make_zip
from tests.e2e.conftest import FAST, ROOT, wait_for, worker_env
from tests.e2e.tcp_proxy import TcpProxy

pytestmark = pytest.mark.e2e

StartWorker = Callable[[Settings], Popen[bytes]]
KMEANS = '{"k": 3, "method": "kmeans"}'


def wait_until(ready: Callable[[], bool], timeout_s: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class RedisServer:
    """A private redis-server on a free port; restartable on the same port and data folder."""

    def __init__(self, folder: Path, *, persistent: bool) -> None:
        self.folder, self.persistent, self.port = folder, persistent, free_port()
        self.process: Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        aof = "yes" if self.persistent else "no"
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", aof, "--appendfsync", "always", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._answers, what="redis-server")

    def stop(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)
        self.process.wait(timeout=30)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[[bool], RedisServer]]:
    servers: list[RedisServer] = []

    def make(persistent: bool) -> RedisServer:
        folder = tmp_path / f"redis-{len(servers)}"
        folder.mkdir()
        server = RedisServer(folder, persistent=persistent)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        if server.process is not None and server.process.poll() is None:
            server.stop(signal.SIGKILL)


def submit_jobs(settings: Settings, count: int) -> list[uuid.UUID]:
    with TestClient(create_app(settings)) as client:
        ids = []
        for seed in range(count):
            response = client.post(
                "/jobs",
                files={"archive": ("c.zip", make_zip(per_class=4, seed=seed), "application/zip")},
                data={"params": KMEANS},
            )
            assert response.status_code == 202, response.text
            ids.append(uuid.UUID(response.json()["id"]))
    return ids


def all_succeed(settings: Settings, job_ids: list[uuid.UUID], sessions: sessionmaker[Session]) -> list[Job]:
    done = [wait_for(sessions, job_id, lambda job: job.state not in ("queued", "running")) for job_id in job_ids]
    assert [job.state for job in done] == [JobState.SUCCEEDED] * len(job_ids), [j.error for j in done]
    return done


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])
def test_jobs_queued_before_a_redis_restart_all_run_once_it_is_back(
    settings: Settings,
    e2e_sessions: sessionmaker[Session],
    start_worker: StartWorker,
    redis_server: Callable[[bool], RedisServer],
) -> None:
    server = redis_server(True)  # append-only file, as the compose deployment runs it
    # The reconciler is kept out of the way: here the broker alone must keep the messages.
    settings = settings.model_copy(
        update={"broker_url": server.url, "resend_queued_after_s": 3600.0, **FAST}
    )
    job_ids = submit_jobs(settings, 3)  # no worker yet: the messages sit in Redis
    server.stop(signal.SIGTERM)
    server.start()
    assert queue.pending_job_ids(settings) == set(job_ids)
    start_worker(settings)
    assert [job.attempts for job in all_succeed(settings, job_ids, e2e_sessions)] == [1, 1, 1]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])
def test_jobs_whose_messages_died_with_a_redis_without_persistence_are_sent_again(
    settings: Settings,
    e2e_sessions: sessionmaker[Session],
    start_worker: StartWorker,
    redis_server: Callable[[bool], RedisServer],
) -> None:
    server = redis_server(False)
    settings = settings.model_copy(
        update={"broker_url": server.url, "resend_queued_after_s": 1.0, **FAST}
    )
    job_ids = submit_jobs(settings, 2)
    server.stop(signal.SIGKILL)
    server.start()
    assert queue.pending_job_ids(settings) == set()  # the messages are gone, the rows are not
    start_worker(settings)  # its reaper finds the queued jobs without a message
    all_succeed(settings, job_ids, e2e_sessions)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_job_whose_message_died_with_a_sigkilled_worker_is_sent_again(
    settings: Settings, e2e_sessions: sessionmaker[Session], start_worker: StartWorker
) -> None:
    settings = settings.model_copy(update={**FAST, "resend_queued_after_s": 1.0})
    [job_id] = submit_jobs(settings.model_copy(update={"resend_queued_after_s": 3600.0}), 1)
    first = start_worker(settings.model_copy(update={"resend_queued_after_s": 3600.0}))
    # The worker takes the message, then its job child spends seconds importing torch before
    # the claim: kill the whole worker in that window.
    wait_until(lambda: not queue.pending_job_ids(settings), what="the worker to take the message")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    with e2e_sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and (job.state, job.attempts) == (JobState.QUEUED, 0)
    assert queue.pending_job_ids(settings) == set()  # the filesystem broker lost the message
    start_worker(settings)
    [job] = all_succeed(settings, [job_id], e2e_sessions)
    assert job.attempts == 1


def test_the_api_answers_503_while_postgres_is_away_and_recovers_by_itself(
    pg_url: str, tmp_path: Path
) -> None:
    proxy = TcpProxy(("127.0.0.1", 5432))
    proxy.start()
    host = pg_url.split("@", 1)[1].split("/", 1)[0]
    settings = Settings(
        database_url=pg_url.replace(host, f"127.0.0.1:{proxy.port}"),
        data_dir=tmp_path / "data",
        broker_url="filesystem://",
    )
    try:
        with TestClient(create_app(settings)) as client:
            assert client.get("/jobs").status_code == 200
            proxy.stop()
            for method, path in (("GET", "/jobs"), ("GET", f"/jobs/{uuid.uuid4()}")):
                response = client.request(method, path)
                assert response.status_code == 503, response.text
                assert response.headers["content-type"] == "application/problem+json"
                assert response.json()["type"].endswith("database_unavailable")
                assert response.headers["retry-after"]
            response = client.post(
                "/jobs",
                files={"archive": ("c.zip", make_zip(per_class=2), "application/zip")},
                data={"params": KMEANS},
            )
            assert response.status_code == 503, response.text
            assert client.get("/ready").status_code == 503
            assert client.get("/health").status_code == 200
            proxy.start()  # Postgres is back: the next request works, no restart
            assert client.get("/jobs").status_code == 200
            assert client.get("/ready").status_code == 200
        assert blobs.job_ids_on_disk(settings) == []
    finally:
        proxy.stop()


class ApiProcess:
    """`corral api` as a real uvicorn process on SQLite with a data folder of its own."""

    def __init__(self, settings: Settings, log: Path, tmp: Path) -> None:
        self.settings, self.log, self.tmp, self.port = settings, log, tmp, free_port()
        self.process: Popen[bytes] | None = None

    def start(self) -> None:
        env = {**worker_env(self.settings), "TMPDIR": str(self.tmp)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "commands", "api", "--port", str(self.port)],
            cwd=ROOT, env=env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
        )
        wait_until(self._healthy, what="the API")

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False


def multipart_head(boundary: str) -> bytes:
    return (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"params\"\r\n\r\n{KMEANS}\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"archive\"; filename=\"a.zip\"\r\n"
        "Content-Type: application/zip\r\n\r\n"
    ).encode()


def start_upload(port: int, body: bytes, declared: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    boundary = body.split(b"\r\n", 1)[0][2:].decode()
    sock.sendall(
        f"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {declared}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n".encode()
    )
    sock.sendall(body)
    return sock


def rows(settings: Settings) -> tuple[int, int]:
    from store.db import make_engine

    engine = make_engine(settings)
    try:
        with engine.connect() as connection:
            return (
                connection.scalar(select(func.count()).select_from(Job)) or 0,
                connection.scalar(select(func.count()).select_from(Image)) or 0,
            )
    finally:
        engine.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])
def test_an_api_killed_mid_upload_leaves_no_rows_or_files_after_restart(
    settings: Settings, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"orphan_grace_s": 0.0})
    spool = tmp_path / "spool"  # the API's TMPDIR: where the multipart parser spools the body
    spool.mkdir()
    api = ApiProcess(settings, tmp_path / "api.log", spool)
    api.start()
    boundary = uuid.uuid4().hex
    # 1. Killed while the body streams in: 4 MiB sent of a declared 64 MiB.
    sock = start_upload(api.port, multipart_head(boundary) + os.urandom(4 * 1024**2), 64 * 1024**2)
    time.sleep(0.5)
    api.kill()
    sock.close()
    # 2. Killed after the body arrived, while the archive is saved and extracted (the job's
    # folder exists, its row does not yet).
    api.start()
    archive = make_zip(per_class=1500, size=8)
    tail = f"\r\n--{boundary}--\r\n".encode()
    body = multipart_head(boundary) + archive + tail
    sock = start_upload(api.port, body, len(body))
    jobs_root = blobs.jobs_root(settings)
    wait_until(lambda: jobs_root.is_dir() and any(jobs_root.iterdir()), what="the job folder")
    api.kill()
    sock.close()
    assert rows(settings) == (0, 0)
    assert any(jobs_root.iterdir())  # left behind by the kill ...
    api.start()  # ... and swept by the restart
    assert list(jobs_root.iterdir()) == []
    assert rows(settings) == (0, 0)
    assert list(spool.iterdir()) == []  # spooled bodies are unlinked files: nothing remains
    api.kill()
    shutil.rmtree(spool, ignore_errors=True)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_serve_stopped_by_sigterm_stops_its_worker_too(settings: Settings) -> None:
    """`corral serve` runs its worker in a session of its own; SIGTERM must not orphan it."""
    port = free_port()
    serve = subprocess.Popen([sys.executable, "-m", "commands", "serve", "--port", str(port)],
                             env=worker_env(settings), cwd=ROOT, start_new_session=True)
    children: list[str] = []
    try:
        wait_until(lambda: _answers_health(port), timeout_s=120, what="corral serve")
        children = Path(f"/proc/{serve.pid}/task/{serve.pid}/children").read_text().split()
        assert children, "serve started no worker"
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=60)
        wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), timeout_s=30,
                   what="the worker to stop with serve")
    finally:  # never leave a process behind, whatever failed above
        for group in [serve.pid, *map(int, children)]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)


def _answers_health(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False

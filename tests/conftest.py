"""Shared fixtures: real Postgres (fresh database, migrated) and SQLite, settings, app, archives.

Postgres tests run each in a transaction that is rolled back; SQLite tests each get a copy of a
migrated template file (pysqlite cannot nest the savepoints the rollback pattern needs).

The session's Postgres database (`pg_url`) stays empty: rolled-back tests count its rows. A test
whose rows are committed (its own engine, a worker process, the worker's heartbeat thread) takes
a database of its own: tests/worker and tests/e2e override `pg_url` with `fresh_pg_database()`.
"""

from __future__ import annotations

import io
import os
import shutil
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import psycopg
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

import migrations
from commands.ports import free_port
from store.db import make_engine, make_sessionmaker
from store.settings import Settings

PG_ADMIN = os.environ.get("CORRAL_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("CORRAL_TEST_REDIS", "redis://127.0.0.1:6379")
CLOSED_PORT = 9  # discard: nothing listens there on a test machine

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@contextmanager
def fresh_pg_database(revision: str = "head") -> Iterator[str]:
    """A fresh database on the real Postgres, upgraded by the Alembic migrations (to `revision`);
    dropped after."""
    name = f"corral_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        migrations.upgrade(Settings(database_url=url, data_dir=Path("/tmp/corral-unused")), revision)
        yield url
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    with fresh_pg_database() as url:
        yield url


@pytest.fixture(scope="session")
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = create_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("sqlite-template")
    migrations.upgrade(Settings(data_dir=data_dir))
    return data_dir / "corral.db"


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """Settings on a fresh SQLite copy, or on the shared Postgres test database."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    common = {"data_dir": data_dir, "broker_url": "filesystem://", "progress_interval_s": 0.1}
    if backend == "sqlite":
        shutil.copy(request.getfixturevalue("sqlite_template"), data_dir / "corral.db")
        return Settings(**common)
    return Settings(database_url=request.getfixturevalue("pg_url"), **common)


@pytest.fixture
def sessions(
    backend: str, settings: Settings, request: pytest.FixtureRequest
) -> Iterator[sessionmaker[Session]]:
    """Session factory; on Postgres every session joins one outer transaction rolled back after."""
    if backend == "sqlite":
        engine = make_engine(settings)
        yield make_sessionmaker(engine)
        engine.dispose()
        return
    engine: Engine = request.getfixturevalue("pg_engine")
    connection = engine.connect()
    outer = connection.begin()
    yield sessionmaker(
        bind=connection, expire_on_commit=False, join_transaction_mode="create_savepoint"
    )
    outer.rollback()
    connection.close()


@pytest.fixture
def session(sessions: sessionmaker[Session]) -> Iterator[Session]:
    with sessions() as session:
        yield session


@pytest.fixture
def app(settings: Settings, sessions: sessionmaker[Session]):  # type: ignore[no-untyped-def]
    from api.main import create_app

    app = create_app(settings)
    app.state.sessions = sessions
    return app


@pytest.fixture
def client(app) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(app) as client:
        yield client


def png_bytes(rgb: tuple[int, int, int], rng: np.random.Generator, size: int = 16) -> bytes:
    noise = rng.integers(-20, 21, size=(size, size, 3))
    pixels = np.clip(np.array(rgb)[None, None, :] + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def make_zip(
    per_class: int = 10, *, extra: dict[str, bytes] | None = None, seed: int = 0, size: int = 16
) -> bytes:
    """Three clearly separable colour classes, one folder each.

    Byte-identical for identical arguments: members carry a fixed timestamp, not the clock's, so
    two calls a second apart still build the same archive (an idempotent retry must match)."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, rgb in COLOURS.items():
            for i in range(per_class):
                archive.writestr(_member(f"{name}/{i:03d}.png"), png_bytes(rgb, rng, size))
        for member, data in (extra or {}).items():
            archive.writestr(_member(member), data)
    return buffer.getvalue()


def _member(name: str) -> zipfile.ZipInfo:
    return zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))


@pytest.fixture
def archive() -> bytes:
    return make_zip()


@pytest.fixture
def submit(client: TestClient) -> Callable[..., httpx.Response]:
    """POST /jobs with an archive and params; returns the response."""

    def post(data: bytes | None = None, params: object = None, **kwargs: object) -> httpx.Response:
        import json

        body = {
            "params": params
            if isinstance(params, str)
            else json.dumps(params or {"k": 3, "method": "kmeans"})
        }
        files = {"archive": ("images.zip", make_zip() if data is None else data, "application/zip")}
        return client.post("/jobs", files=files, data=body, **kwargs)  # type: ignore[arg-type]

    return post


@pytest.fixture
def server(app: FastAPI) -> Iterator[str]:
    """The real app served by uvicorn on a free local port; its URL."""
    with serving(app) as url:
        yield url


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """Serve `app` with uvicorn in a thread on a free local port; its URL until the block ends."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)

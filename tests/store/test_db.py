"""Engines give up on a database server that does not answer, instead of hanging."""

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from store.db import make_engine
from store.settings import Settings


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port whose connections the kernel completes but nobody ever answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # never accepted: a connect succeeds, the server's greeting never comes
        yield int(listener.getsockname()[1])


@pytest.mark.timeout(60)  # without a connect timeout libpq would wait here for good
@pytest.mark.parametrize(
    ("query", "setting"),
    [("", 2), ("?connect_timeout=2", 3600)],  # the setting, or the URL's own value
    ids=["setting", "url"],
)
def test_a_connect_to_a_server_that_never_answers_fails(
    silent_server: int, tmp_path: Path, query: str, setting: int
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url=f"postgresql+psycopg://postgres@127.0.0.1:{silent_server}/test{query}",
        database_connect_timeout_s=setting,
    )
    engine = make_engine(settings, pooled=False)
    with pytest.raises(OperationalError, match="timeout"), engine.connect() as connection:
        connection.execute(text("select 1"))



def _backend_pid(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("select pg_backend_pid()")).scalar_one())


def test_a_connection_in_steady_use_is_not_pinged(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(Settings(data_dir=tmp_path, database_url=pg_url))
    pings: list[object] = []
    monkeypatch.setattr(engine.dialect, "do_ping", pings.append)
    assert _backend_pid(engine) == _backend_pid(engine)  # the same pooled connection, twice
    assert pings == []
    engine.dispose()


def test_an_idle_connection_cut_by_the_server_is_replaced_at_checkout(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("store.db.IDLE_PING_S", 0.0)  # every checked-in connection counts as idle
    engine = make_engine(Settings(data_dir=tmp_path, database_url=pg_url))
    first = _backend_pid(engine)
    admin = create_engine(pg_url)
    with admin.connect() as connection:
        connection.execute(text("select pg_terminate_backend(:pid)"), {"pid": first})
    admin.dispose()
    assert _backend_pid(engine) != first  # the ping failed, the pool opened a fresh connection
    engine.dispose()


def test_reading_sessions_run_without_a_transaction(pg_url: str, tmp_path: Path) -> None:
    """GET requests' sessions: AUTOCOMMIT (no BEGIN/ROLLBACK); others and the tests' bound ones as they are."""
    from sqlalchemy.orm import sessionmaker

    from store.db import make_sessionmaker, reading

    engine = make_engine(Settings(data_dir=tmp_path, database_url=pg_url))
    factory = make_sessionmaker(engine)
    for sessions, autocommit in ((reading(factory), True), (factory, False)):
        with sessions() as session:
            session.execute(text("select 1"))
            assert session.connection().connection.dbapi_connection.autocommit is autocommit
    assert reading(factory) is reading(factory)
    with engine.connect() as connection:
        bound = sessionmaker(bind=connection)
        assert reading(bound) is bound
    engine.dispose()

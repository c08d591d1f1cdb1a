"""The one place that builds database engines and sessions from settings."""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from store.settings import Settings

IDLE_PING_S = 5.0  # a pooled connection unused this long is pinged before it is handed out
IDLE_SINCE = "corral.idle_since"  # connection record info key


def make_engine(settings: Settings, *, pooled: bool = True) -> Engine:
    """Engine for `settings.database_url`; SQLite gets WAL, foreign keys and a busy timeout.

    `pooled=False` keeps no idle connections, for code that runs in a process that forks
    (a Celery worker's main process) where an inherited pooled socket would be shared.
    """
    url = settings.database_url
    kwargs: dict[str, Any] = {}
    if not pooled:
        kwargs["poolclass"] = NullPool
    else:
        kwargs.update(
            pool_size=settings.database_pool_size,
            max_overflow=settings.database_max_overflow,
            pool_timeout=settings.database_wait_s,  # a checkout never blocks a thread for long
        )
    if url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    own_timeout = "connect_timeout" in make_url(url).query
    connect_args = {} if own_timeout else {"connect_timeout": settings.database_connect_timeout_s}
    engine = create_engine(url, connect_args=connect_args, **kwargs)
    if pooled:
        ping_after_idle(engine, IDLE_PING_S)
    return engine


def ping_after_idle(engine: Engine, idle_s: float) -> None:
    """Ping a pooled connection at checkout only when it sat unused for `idle_s` or more.

    `pool_pre_ping` pings at every checkout: one more round trip per request, which under load
    costs more than the query. A connection in steady use is known good; one that sat idle may
    have been cut (a server restart, a firewall), and a failed ping makes the pool open a fresh
    one, as pre-ping would. A connection that breaks while busy fails its request with a 503.
    """

    @event.listens_for(engine, "checkin")
    def _idle_from(_dbapi_connection: Any, record: Any) -> None:
        record.info[IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop(IDLE_SINCE, None)
        if since is None or time.monotonic() - since < idle_s:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as error:  # any failure means this connection is gone
            raise DisconnectionError() from error
        if not alive:
            raise DisconnectionError()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the worker's writes
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


_READING: weakref.WeakKeyDictionary[sessionmaker[Session], sessionmaker[Session]] = (
    weakref.WeakKeyDictionary()  # one per factory, gone with it (an app's engine is not kept alive)
)


def reading(factory: sessionmaker[Session]) -> sessionmaker[Session]:
    """Sessions for read-only work: each statement commits on its own (AUTOCOMMIT).

    Saves the BEGIN and ROLLBACK round trips around a request's reads, under load the larger
    part of a GET's database time. Visibility is unchanged: at READ COMMITTED every statement
    sees its own snapshot inside a transaction too. Never for writes. A factory bound to a
    connection (the tests' rolled-back transaction) is returned as it is.
    """
    found = _READING.get(factory)
    if found is None:
        bind = factory.kw.get("bind")
        if not isinstance(bind, Engine):
            return factory
        autocommit = bind.execution_options(isolation_level="AUTOCOMMIT")
        found = _READING[factory] = sessionmaker(bind=autocommit, expire_on_commit=False)
    return found


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on any exception."""
    with factory() as session, session.begin():
        yield session

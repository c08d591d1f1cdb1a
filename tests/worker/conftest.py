from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from store.db import make_engine, make_sessionmaker
from store.settings import Settings
from tests.conftest import fresh_pg_database


@pytest.fixture
def pg_url() -> Iterator[str]:
    """These tests commit: each gets a Postgres database of its own, not the suite's shared one,
    whose rolled-back tests expect it empty (and the reaper's passes here see every queued row)."""
    with fresh_pg_database() as url:
        yield url


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    """Committing sessions: the worker writes from a heartbeat thread too, which cannot share
    the one rolled-back test connection. On Postgres the rows go to this test's own database."""
    engine = make_engine(settings)
    yield make_sessionmaker(engine)
    engine.dispose()

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from store.db import make_engine, make_sessionmaker
from store.settings import Settings


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    """Committing sessions: the worker writes from a heartbeat thread too, which cannot share
    the one rolled-back test connection. Rows stay in the per-run test database, dropped after."""
    engine = make_engine(settings)
    yield make_sessionmaker(engine)
    engine.dispose()

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.orm import Session

from store.models import Base


def test_migrations_match_models(session: Session) -> None:
    """The schema the migrations build is exactly what the models declare (both backends)."""
    context = MigrationContext.configure(session.connection(), opts={"compare_type": True})
    assert compare_metadata(context, Base.metadata) == []

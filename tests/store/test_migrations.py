from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.orm import Session

import migrations
from store.models import Base
from store.settings import Settings
from tests.conftest import fresh_pg_database

# SQLite adds a column's foreign key only inline (`ALTER TABLE ... ADD COLUMN ... REFERENCES`),
# and SQLAlchemy's SQLite reflection reads names and ON DELETE only from table-level FOREIGN KEY
# clauses: migration 0003's jobs.source_job_id reads back unnamed, without its ON DELETE.
# test_source_job_id_cascades_on_sqlite checks that key from SQLite's own pragma instead.
INLINE_SQLITE_FKS = {("jobs", ("source_job_id",))}


def _diffs(connection: sa.Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    found = []
    for diff in compare_metadata(context, Base.metadata):
        if connection.dialect.name == "sqlite" and diff[0] in ("add_fk", "remove_fk"):
            fk = diff[1]
            if (fk.table.name, tuple(c.name for c in fk.columns)) in INLINE_SQLITE_FKS:
                continue
        found.append(diff)
    return found


def test_migrations_match_models(session: Session) -> None:
    """The schema the migrations build is exactly what the models declare (both backends)."""
    assert _diffs(session.connection()) == []


def test_source_job_id_cascades_on_sqlite(settings: Settings, backend: str) -> None:
    if backend != "sqlite":
        pytest.skip("Postgres reflects the key; test_migrations_match_models compares it")
    engine = sa.create_engine(settings.database_url)
    with engine.connect() as connection:
        keys = connection.exec_driver_sql("PRAGMA foreign_key_list(jobs)").mappings().all()
    engine.dispose()
    [key] = [k for k in keys if k["from"] == "source_job_id"]
    assert (key["table"], key["to"], key["on_delete"]) == ("jobs", "id", "CASCADE")


@pytest.fixture
def empty_database(backend: str, tmp_path: Path) -> Iterator[Settings]:
    """Settings on a database no test has touched: upgraded only to 0002 by the test itself."""
    if backend == "sqlite":
        yield Settings(data_dir=tmp_path / "data")
        return
    with fresh_pg_database(revision="0002") as url:
        yield Settings(database_url=url, data_dir=tmp_path / "data")


def _columns(settings: Settings, table: str) -> list[str]:
    engine = sa.create_engine(settings.database_url)
    try:
        return [column["name"] for column in sa.inspect(engine).get_columns(table)]
    finally:
        engine.dispose()


def _rows(settings: Settings, sql: str) -> list[tuple[object, ...]]:
    engine = sa.create_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.exec_driver_sql(sql)]
    finally:
        engine.dispose()


def _execute(settings: Settings, *statements: str) -> None:
    engine = sa.create_engine(settings.database_url)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "sqlite":
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            for sql in statements:
                connection.exec_driver_sql(sql)
    finally:
        engine.dispose()


JOB_COLUMNS = (
    "id, state, params, archive_format, archive_entries, n_images, n_skipped, skipped, attempts, created_at, "
    "updated_at"
)


def test_0003_up_and_down_keeps_jobs_images_and_results(empty_database: Settings) -> None:
    """From 0002 with a finished job: up to 0003 (k backfilled), a re-clustering added, down to
    0002 (the re-clustering gone, the job's images and assignments kept), and up again."""
    settings = empty_database
    migrations.upgrade(settings, "0002")
    job, image = "a" * 32, "b" * 32
    if "postgresql" in settings.database_url:
        job, image = f"'{job}'::uuid", f"'{image}'::uuid"
    else:
        job, image = f"'{job}'", f"'{image}'"
    now = "'2026-12-01 00:00:00'"
    _execute(
        settings,
        f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES ({job}, 'succeeded', '{{\"k\": 3}}', 'zip', 1, 1, 0, "
        f"'[]', 1, {now}, {now})",
        "INSERT INTO images (id, job_id, seq, path, blob_name, blob_offset, size_bytes, width, height, format) "
        f"VALUES ({image}, {job}, 0, 'a/1.png', 'images.pack', 0, 10, 16, 16, 'PNG')",
        f"INSERT INTO assignments (image_id, job_id, seq, cluster, confidence) VALUES ({image}, {job}, 0, 1, 0.9)",
    )
    assert "k" not in _columns(settings, "jobs")

    migrations.upgrade(settings, "0003")
    assert {"k", "k_selection", "source_job_id"} <= set(_columns(settings, "jobs"))
    assert _rows(settings, "SELECT k FROM jobs") == [(3,)]
    child = job.replace("a", "c")
    _execute(
        settings,
        f"INSERT INTO jobs ({JOB_COLUMNS}, source_job_id, k) VALUES ({child}, 'succeeded', '{{\"k\": 2}}', "
        f"'zip', 1, 1, 0, '[]', 1, {now}, {now}, {job}, 2)",
        f"INSERT INTO assignments (image_id, job_id, seq, cluster, confidence) VALUES ({image}, {child}, 0, 0, 0.8)",
    )
    assert len(_rows(settings, "SELECT * FROM assignments")) == 2  # one image, two jobs

    command.downgrade(migrations.alembic_config(settings), "0002")
    assert not {"k", "k_selection", "source_job_id"} & set(_columns(settings, "jobs"))
    assert len(_rows(settings, "SELECT id FROM jobs")) == 1
    assert len(_rows(settings, "SELECT image_id FROM assignments")) == 1
    assert len(_rows(settings, "SELECT id FROM images")) == 1

    migrations.upgrade(settings, "head")
    assert _rows(settings, "SELECT k FROM jobs") == [(3,)]

"""jobs.k, jobs.k_selection, jobs.source_job_id; assignments keyed by (image_id, job_id)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

k may be omitted: the job chooses it after training, records how (`k_selection`) and the k it
chose (`k`, the result's k for every job; backfilled from params for existing jobs). A
re-clustering is a job with `source_job_id`: it re-uses its source's images, embeddings and
model, so an image can now have one assignment per job, and the key becomes (image_id, job_id).

Downgrade deletes the re-clusterings (the old schema cannot hold them; their folders under
`jobs/` are left for the API's orphan sweep).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FK_NAME = "fk_jobs_source_job_id_jobs"


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    # Plain ADD COLUMN on both backends: a batch (copy-and-rename) of `jobs` on SQLite would drop
    # the old table, and with foreign keys on that deletes every image and result by cascade.
    op.add_column("jobs", sa.Column("k", sa.Integer(), nullable=True))
    op.add_column("jobs", sa.Column("k_selection", sa.JSON(), nullable=True))
    if sqlite:  # SQLite adds a column's foreign key only inline
        op.execute(
            f"ALTER TABLE jobs ADD COLUMN source_job_id CHAR(32) CONSTRAINT {FK_NAME} "
            "REFERENCES jobs (id) ON DELETE CASCADE"
        )
    else:
        op.add_column("jobs", sa.Column("source_job_id", sa.Uuid(), nullable=True))
        op.create_foreign_key(FK_NAME, "jobs", "jobs", ["source_job_id"], ["id"], ondelete="CASCADE")
    op.create_index("ix_jobs_source_job_id", "jobs", ["source_job_id"], unique=False)
    k_of_params = "json_extract(params, '$.k')" if sqlite else "(params ->> 'k')::integer"
    op.execute(f"UPDATE jobs SET k = {k_of_params}")
    with op.batch_alter_table("assignments") as batch:  # nothing references assignments
        batch.drop_constraint("pk_assignments", type_="primary")
        batch.create_primary_key("pk_assignments", ["image_id", "job_id"])


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        # SQLite drops a foreign-key column only by rebuilding `jobs`, which drops the old table:
        # with foreign keys on, that would cascade into every image and result. The pragma works
        # only outside a transaction, i.e. before the first write of this run.
        op.execute("PRAGMA foreign_keys=OFF")
        if op.get_bind().exec_driver_sql("PRAGMA foreign_keys").scalar():
            raise RuntimeError("downgrade 0003 on SQLite must run on its own: alembic downgrade 0002")
    reclusterings = "SELECT id FROM jobs WHERE source_job_id IS NOT NULL"
    for table in ("assignments", "clusters"):  # explicit: with foreign keys off nothing cascades
        op.execute(f"DELETE FROM {table} WHERE job_id IN ({reclusterings})")
    op.execute("DELETE FROM jobs WHERE source_job_id IS NOT NULL")
    with op.batch_alter_table("assignments") as batch:
        batch.drop_constraint("pk_assignments", type_="primary")
        batch.create_primary_key("pk_assignments", ["image_id"])
    op.drop_index("ix_jobs_source_job_id", table_name="jobs")
    if sqlite:
        with op.batch_alter_table("jobs") as batch:
            batch.drop_column("source_job_id")
    else:
        op.drop_constraint(FK_NAME, "jobs", type_="foreignkey")
        op.drop_column("jobs", "source_job_id")
    op.drop_column("jobs", "k_selection")
    op.drop_column("jobs", "k")
    if sqlite:
        op.execute("PRAGMA foreign_keys=ON")

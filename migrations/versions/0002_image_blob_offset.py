"""images.blob_offset: images stored in one pack file per job

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

Uploads write all accepted images of a job into one file instead of one file per image; each
row says where its bytes start. Existing rows keep NULL: their blob is the image's own file.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("blob_offset", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_column("blob_offset")

"""ORM models. The schema only changes through Alembic migrations (migrations/versions)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_STATES = (JobState.QUEUED, JobState.RUNNING, JobState.CANCELLING)
FINISHED_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out; SQLite stores naive text, so UTC is re-attached on load."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; use store.models.utcnow()")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime,
        dict[str, Any]: JSON,
        list[Any]: JSON,
    }


class ApiKey(Base):
    """A client credential; only the SHA-256 of the key is stored."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # shown in listings to tell keys apart
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(
            "state IN ('queued', 'running', 'cancelling', 'succeeded', 'failed', 'cancelled')",
            name="state",
        ),
        CheckConstraint("attempts >= 0", name="attempts"),
        Index("ix_jobs_created_at_id", "created_at", "id"),
        Index("ix_jobs_state_heartbeat_at", "state", "heartbeat_at"),
        UniqueConstraint("owner_id", "idempotency_key", name="uq_jobs_owner_id_idempotency_key"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    owner_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="SET NULL"), index=True
    )
    name: Mapped[str | None] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED)
    params: Mapped[dict[str, Any]]  # ClusterConfig.to_dict(); k None: chosen after training
    # The number of clusters of the result: params' k when given, else the chosen one once the
    # job succeeded (None until then).
    k: Mapped[int | None]
    # How an auto-k job chose k: core's KChoice.to_dict() (k, criterion, k_max, scores per k).
    k_selection: Mapped[dict[str, Any] | None]
    # Set on a re-clustering: the trained job whose images, embeddings and model it re-uses (it
    # has no images or training of its own). Deleting that job deletes its re-clusterings.
    source_job_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), index=True
    )
    # Upload.
    archive_format: Mapped[str] = mapped_column(String(16))
    archive_entries: Mapped[int] = mapped_column(default=0)
    n_images: Mapped[int] = mapped_column(default=0)  # images accepted at upload
    n_skipped: Mapped[int] = mapped_column(default=0)
    skipped: Mapped[list[Any]] = mapped_column(default=list)  # [{path, reason}], upload + decode
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    # Progress, written by the worker at most every `progress_interval_s`.
    stage: Mapped[str | None] = mapped_column(String(32))
    epoch: Mapped[int | None]
    epochs: Mapped[int | None]
    progress_metrics: Mapped[dict[str, Any] | None]  # loss, images_per_s, ...
    progress_at: Mapped[datetime | None]
    # Outcome.
    n_clustered: Mapped[int | None]
    metrics: Mapped[dict[str, Any] | None]  # acc, nmi, ari when the archive had class folders
    timings: Mapped[dict[str, Any] | None]  # seconds: decode, train, embed, write, total
    device: Mapped[str | None] = mapped_column(String(32))
    resumed_from_epoch: Mapped[int | None]
    error: Mapped[dict[str, Any] | None]  # problem+json body when failed
    # Execution bookkeeping: claim by compare-and-set on (state, attempts).
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(200))  # host:pid of the claiming process
    heartbeat_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    images: Mapped[list[Image]] = relationship(
        back_populates="job", cascade="all, delete-orphan", passive_deletes=True
    )

    @property
    def images_job_id(self) -> uuid.UUID:
        """The job whose folder holds this job's images and embeddings (its source, if any)."""
        return self.source_job_id or self.id


class Image(Base):
    """One accepted image of a job, stored under a generated blob name."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("job_id", "seq", name="uq_images_job_id_seq"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int]  # position in upload order; the assignments cursor
    path: Mapped[str] = mapped_column(String(1024))  # member path in the archive (display only)
    blob_name: Mapped[str] = mapped_column(String(128))
    # Where the bytes start inside the blob: a job's images share one pack file (one create
    # instead of one per image). None: the blob is this image's own file (jobs from before packs).
    blob_offset: Mapped[int | None] = mapped_column(BigInteger)
    size_bytes: Mapped[int]
    width: Mapped[int]
    height: Mapped[int]
    format: Mapped[str] = mapped_column(String(16))

    job: Mapped[Job] = relationship(back_populates="images")


class Assignment(Base):
    """The cluster of one image in one job; written in one bulk write when a job succeeds.

    An image has one row per job that clustered it: its own and each re-clustering of it. The
    key leads with image_id, so deleting an image's row finds its assignments by the key.
    """

    __tablename__ = "assignments"
    __table_args__ = (
        Index("ix_assignments_job_id_cluster_confidence", "job_id", "cluster", "confidence"),
        Index("ix_assignments_job_id_seq", "job_id", "seq", unique=True),
    )

    image_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int]  # copy of images.seq so pages need no join
    cluster: Mapped[int]
    confidence: Mapped[float] = mapped_column(Float)


class Cluster(Base):
    """Summary of one cluster of a finished job."""

    __tablename__ = "clusters"

    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    cluster: Mapped[int] = mapped_column(primary_key=True)
    size: Mapped[int]
    mean_confidence: Mapped[float] = mapped_column(Float)
    representatives: Mapped[list[Any]]  # [{image_id, path, confidence}], highest confidence first

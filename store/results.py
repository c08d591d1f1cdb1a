"""Repository functions for a finished job's assignments and cluster summaries."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import delete, insert, or_, select
from sqlalchemy.orm import Session

from store.models import Assignment, Cluster, Image, Job

REPRESENTATIVES = 5  # images shown per cluster in GET /jobs/{id}/clusters


@dataclass(frozen=True)
class AssignmentRow:
    seq: int
    image_id: uuid.UUID
    path: str
    cluster: int
    confidence: float


class Clustered(Protocol):
    """What the write needs of an image (an `images` row and `ClusteredImage` fit)."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def seq(self) -> int: ...
    @property
    def path(self) -> str: ...


@dataclass(frozen=True)
class ClusteredImage:
    id: uuid.UUID
    seq: int
    path: str


def write_results(
    session: Session,
    *,
    job_id: uuid.UUID,
    images: Sequence[Clustered],
    labels: Sequence[int],
    confidences: Sequence[float],
    k: int,
) -> None:
    """All assignments in one bulk write (COPY on Postgres) plus one summary row per cluster."""
    rows = [
        (image.id, job_id, image.seq, int(label), float(conf))
        for image, label, conf in zip(images, labels, confidences, strict=True)
    ]
    session.execute(delete(Assignment).where(Assignment.job_id == job_id))
    session.execute(delete(Cluster).where(Cluster.job_id == job_id))
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        _copy_assignments(connection.connection.driver_connection, rows)
    elif rows:
        # Plain executemany with the ORM's UUID binding: 70,000 rows in 1.0-1.2 s where
        # insert(Assignment) with a list of dicts took 2.2 s (same run, a loaded 2-core machine).
        # In key order (image_id leads it), so each insert lands beside the last: 0.55 s against
        # 0.67-0.83 s in upload order (sqlite3 alone; bench/RESULTS.md, "Re-clustering").
        uuid_in = Assignment.__table__.c.image_id.type.bind_processor(connection.dialect) or _same
        job = uuid_in(job_id)
        connection.exec_driver_sql(
            "INSERT INTO assignments (image_id, job_id, seq, cluster, confidence) VALUES (?, ?, ?, ?, ?)",
            sorted((uuid_in(image_id), job, seq, label, conf) for image_id, _, seq, label, conf in rows),
        )
    session.execute(insert(Cluster), _summaries(job_id, images, rows, k))


def _same(value: Any) -> Any:
    return value


def clustered_images(session: Session, *, job_id: uuid.UUID) -> list[ClusteredImage]:
    """The images a succeeded job assigned, in upload (`seq`) order: the rows of its
    embeddings.npy. A re-clustering clusters exactly these again. Plain rows, not ORM objects:
    70,000 in 1.3-1.6 s where Image objects took 2.0-2.8 s (same run, a loaded machine)."""
    query = (
        select(Assignment.image_id, Assignment.seq, Image.path)
        .join(Image, Image.id == Assignment.image_id)
        .where(Assignment.job_id == job_id)
        .order_by(Assignment.seq)
    )
    return [ClusteredImage(*row) for row in session.execute(query)]


def _copy_assignments(driver_connection: Any, rows: list[tuple[Any, ...]]) -> None:
    copy_sql = "COPY assignments (image_id, job_id, seq, cluster, confidence) FROM STDIN"
    with driver_connection.cursor() as cursor, cursor.copy(copy_sql) as copy:
        for row in rows:
            copy.write_row(row)


def _summaries(
    job_id: uuid.UUID, images: Sequence[Clustered], rows: list[tuple[Any, ...]], k: int
) -> list[dict[str, Any]]:
    members: list[list[tuple[float, int]]] = [[] for _ in range(k)]  # (confidence, index)
    for index, (_, _, _, label, conf) in enumerate(rows):
        members[label].append((conf, index))
    summaries = []
    for cluster, entries in enumerate(members):
        best = sorted(entries, key=lambda entry: (-entry[0], entry[1]))[:REPRESENTATIVES]
        summaries.append(
            {
                "job_id": job_id,
                "cluster": cluster,
                "size": len(entries),
                "mean_confidence": sum(c for c, _ in entries) / len(entries) if entries else 0.0,
                "representatives": [
                    {"image_id": str(images[i].id), "path": images[i].path, "confidence": c}
                    for c, i in best
                ],
            }
        )
    return summaries


def list_clusters(session: Session, *, job_id: uuid.UUID) -> list[Cluster]:
    query = select(Cluster).where(Cluster.job_id == job_id).order_by(Cluster.cluster)
    return list(session.scalars(query))


@dataclass(frozen=True)
class JobClusters:
    """A job's owner and state with its cluster rows (none unless it succeeded)."""

    id: uuid.UUID
    owner_id: uuid.UUID | None
    state: str
    clusters: list[Any]  # rows of (cluster, size, mean_confidence, representatives)


def job_clusters(session: Session, *, job_id: uuid.UUID) -> JobClusters | None:
    """The job and its clusters in one query: GET /jobs/{id}/clusters' one read of the database."""
    query = (
        select(
            Job.owner_id,
            Job.state,
            Cluster.cluster,
            Cluster.size,
            Cluster.mean_confidence,
            Cluster.representatives,
        )
        .select_from(Job)
        .outerjoin(Cluster, Cluster.job_id == Job.id)
        .where(Job.id == job_id)
        .order_by(Cluster.cluster)
    )
    rows = session.execute(query).all()
    if not rows:
        return None
    clusters = [row for row in rows if row.cluster is not None]  # the outer join's NULL row
    return JobClusters(job_id, rows[0].owner_id, rows[0].state, clusters)


def get_cluster(session: Session, *, job_id: uuid.UUID, cluster: int) -> Cluster | None:
    return session.get(Cluster, (job_id, cluster))


def _assignment_query() -> Any:
    return select(
        Assignment.seq, Assignment.image_id, Image.path, Assignment.cluster, Assignment.confidence
    ).join(Image, Image.id == Assignment.image_id)


def list_assignments(
    session: Session, *, job_id: uuid.UUID, after_seq: int | None, limit: int
) -> list[AssignmentRow]:
    """In upload order; `after_seq` is the last `seq` of the previous page."""
    query = _assignment_query().where(Assignment.job_id == job_id)
    if after_seq is not None:
        query = query.where(Assignment.seq > after_seq)
    query = query.order_by(Assignment.seq).limit(limit)
    return [AssignmentRow(*row) for row in session.execute(query)]


def iter_assignments(
    session: Session, *, job_id: uuid.UUID, batch: int = 5000
) -> Iterator[AssignmentRow]:
    """Every assignment of a job, streamed in upload order."""
    after: int | None = None
    while True:
        page = list_assignments(session, job_id=job_id, after_seq=after, limit=batch)
        yield from page
        if len(page) < batch:
            return
        after = page[-1].seq


def list_cluster_members(
    session: Session,
    *,
    job_id: uuid.UUID,
    cluster: int,
    after: tuple[float, int] | None,
    limit: int,
) -> list[AssignmentRow]:
    """Highest confidence first; `after` is the (confidence, seq) of the previous page's last."""
    query = _assignment_query().where(Assignment.job_id == job_id, Assignment.cluster == cluster)
    if after is not None:
        confidence, seq = after
        query = query.where(
            or_(
                Assignment.confidence < confidence,
                (Assignment.confidence == confidence) & (Assignment.seq > seq),
            )
        )
    query = query.order_by(Assignment.confidence.desc(), Assignment.seq).limit(limit)
    return [AssignmentRow(*row) for row in session.execute(query)]


@dataclass(frozen=True)
class ImageFile:
    """An assigned image with the blob that holds its bytes (for exports and thumbnails)."""

    seq: int
    image_id: uuid.UUID
    path: str
    blob_name: str
    cluster: int
    confidence: float
    blob_offset: int | None = None  # None: the blob is this image's own file
    size_bytes: int = 0


def _image_file_query() -> Any:
    return select(
        Assignment.seq, Image.id, Image.path, Image.blob_name, Assignment.cluster,
        Assignment.confidence, Image.blob_offset, Image.size_bytes,
    ).join(Image, Image.id == Assignment.image_id)


def iter_image_files(
    session: Session, *, job_id: uuid.UUID, batch: int = 2000
) -> Iterator[ImageFile]:
    """Every assigned image of a job with its blob name, in upload order."""
    after = -1
    while True:
        query = (
            _image_file_query()
            .where(Assignment.job_id == job_id, Assignment.seq > after)
            .order_by(Assignment.seq)
            .limit(batch)
        )
        page = [ImageFile(*row) for row in session.execute(query)]
        yield from page
        if len(page) < batch:
            return
        after = page[-1].seq


def get_image_file(session: Session, *, job_id: uuid.UUID, image_id: uuid.UUID) -> ImageFile | None:
    query = _image_file_query().where(Assignment.job_id == job_id, Image.id == image_id)
    row = session.execute(query).first()
    return ImageFile(*row) if row else None

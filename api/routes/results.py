"""A finished job's clusters and per-image assignments (paginated JSON or streamed CSV)."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal, Protocol

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api import cursors, exports
from api.deps import JobDep, JobLookup, JobLookupDep, SessionDep
from api.errors import ProblemError
from api.openapi import BAD_CURSOR, CURSOR, NOT_SUCCEEDED, link, problems
from api.schemas import AssignmentOut, AssignmentPage, ClustersOut
from core.config import MAX_K
from store import results
from store.models import Job, JobState

router = APIRouter(prefix="/jobs/{job_id}", tags=["results"])

# A page's first image to its thumbnail (a stateful client follows it with a real image id).
THUMBNAIL_OF_FIRST_ITEM = link(
    "get_thumbnail", job_id="$request.path.job_id", image_id="$response.body#/items/0/image_id"
)
CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # spreadsheet formula triggers (OWASP)


class Stated(Protocol):
    @property
    def id(self) -> uuid.UUID: ...
    @property
    def state(self) -> str: ...


def require_results(job: Stated) -> None:
    if job.state != JobState.SUCCEEDED:
        raise ProblemError(
            409,
            "job_not_succeeded",
            "No results yet",
            f"job {job.id} is {job.state}; results exist once it has succeeded",
            state=job.state,
        )


def require_artifact(job: Job, path: Path, code: str, title: str, detail: str) -> Path:
    """A file a succeeded job keeps (embeddings, model); 404 for jobs that finished before it was kept."""
    require_results(job)
    if not path.is_file():
        raise ProblemError(404, code, title, detail)
    return path


@router.get(
    "/clusters",
    response_model=ClustersOut,
    responses={
        200: {
            "links": {
                **link("list_cluster_images", job_id="$request.path.job_id", cluster="$response.body#/clusters/0/id"),
                **link(
                    "get_thumbnail",
                    job_id="$request.path.job_id",
                    image_id="$response.body#/clusters/0/representatives/0/image_id",
                ),
            }
        },
        **problems(401, 404, 409, 503, notes=NOT_SUCCEEDED),
    },
)
async def list_clusters(find_job: JobLookupDep, session: SessionDep) -> ClustersOut:
    """Every cluster: size, mean confidence and its most confident images."""
    # async, all its reads in one thread-pool call: each hop costs more under load than a query
    found = await run_in_threadpool(_clusters, find_job, session)
    clusters = [
        {
            "id": row.cluster,
            "size": row.size,
            "mean_confidence": row.mean_confidence,
            "representatives": row.representatives,
        }
        for row in found.clusters
    ]
    # one validation of plain data: pydantic-core builds the nested models faster than Python
    return ClustersOut.model_validate({"job_id": found.id, "k": len(clusters), "clusters": clusters})


def _clusters(find_job: JobLookup, session: Session) -> results.JobClusters:
    found = find_job.read(lambda session, job_id: results.job_clusters(session, job_id=job_id))
    require_results(found)
    return found


@router.get(
    "/clusters/{cluster}/images",
    response_model=AssignmentPage,
    responses={
        200: {"links": THUMBNAIL_OF_FIRST_ITEM},
        **problems(
            400, 401, 404, 409, 422, 503,
            notes={**BAD_CURSOR, 404: "or it has no such cluster (cluster_not_found)", **NOT_SUCCEEDED},
        ),
    },
)
def list_cluster_images(
    job: JobDep,
    session: SessionDep,
    cluster: Annotated[int, PathParam(ge=0, lt=MAX_K, description="cluster id, 0 to k-1")],
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=200, description=CURSOR)] = None,
) -> AssignmentPage:
    """Members of one cluster, highest confidence first."""
    require_results(job)
    if results.get_cluster(session, job_id=job.id, cluster=cluster) is None:
        raise ProblemError(
            404, "cluster_not_found", "Cluster not found", f"job {job.id} has no cluster {cluster}"
        )
    after = None
    if cursor:
        confidence, seq = cursors.decode(cursor, float, cursors.position)
        after = (confidence, seq)
    rows = results.list_cluster_members(
        session, job_id=job.id, cluster=cluster, after=after, limit=limit + 1
    )
    page = rows[:limit]
    more = len(rows) > limit
    return AssignmentPage(
        items=[_assignment(row) for row in page],
        next_cursor=cursors.encode(page[-1].confidence, page[-1].seq) if more else None,
    )


@router.get(
    "/assignments",
    response_model=AssignmentPage,
    responses={
        200: {
            "content": {
                "text/csv": {},
                "application/x-ndjson": {},
                "application/vnd.apache.parquet": {},
            },
            "links": THUMBNAIL_OF_FIRST_ITEM,
        },
        **problems(400, 401, 404, 409, 422, 503, notes={**BAD_CURSOR, **NOT_SUCCEEDED}),
    },
)
def list_assignments(
    request: Request,
    job: JobDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
    cursor: Annotated[str | None, Query(max_length=200, description=CURSOR)] = None,
    format: Annotated[Literal["json", "csv", "jsonl", "parquet"], Query()] = "json",
) -> AssignmentPage | StreamingResponse:
    """Every image's cluster in upload order; `format=csv|jsonl|parquet` gives the whole set."""
    require_results(job)
    if format != "json":
        return _export(request.app.state.sessions, job, format)
    after = cursors.decode(cursor, cursors.position)[0] if cursor else None
    rows = results.list_assignments(session, job_id=job.id, after_seq=after, limit=limit + 1)
    page, more = rows[:limit], len(rows) > limit
    return AssignmentPage(
        items=[_assignment(row) for row in page],
        next_cursor=cursors.encode(page[-1].seq) if more else None,
    )


EXPORT_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "jsonl": "application/x-ndjson",
    "parquet": "application/vnd.apache.parquet",
}


def _export(sessions: sessionmaker[Session], job: Job, format: str) -> StreamingResponse:
    stream: Iterator[str] | Iterator[bytes]
    if format == "csv":
        stream = _csv_rows(sessions, job)
    elif format == "jsonl":
        stream = exports.jsonl_lines(sessions, job.id)
    else:
        stream = exports.file_chunks(exports.parquet_file(sessions, job.id))
    headers = {"Content-Disposition": f'attachment; filename="{job.id}-assignments.{format}"'}
    return StreamingResponse(stream, media_type=EXPORT_TYPES[format], headers=headers)


def _assignment(row: results.AssignmentRow) -> AssignmentOut:
    return AssignmentOut(
        image_id=row.image_id, path=row.path, cluster=row.cluster, confidence=row.confidence
    )


def neutralise(cell: str) -> str:
    """Prefix cells a spreadsheet would run as a formula with a quote."""
    return "'" + cell if cell.startswith(CSV_FORMULA_START) else cell


def _csv_rows(sessions: sessionmaker[Session], job: Job) -> Iterator[str]:
    # Its own session: the response streams after the request's session is gone.
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image_id", "path", "cluster", "confidence"])
    with sessions() as session:
        for i, row in enumerate(results.iter_assignments(session, job_id=job.id)):
            writer.writerow(
                [row.image_id, neutralise(row.path), row.cluster, f"{row.confidence:.6f}"]
            )
            if i % 1000 == 999:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
    yield buffer.getvalue()

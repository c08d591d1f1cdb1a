"""POST /jobs/{id}/reclusterings: a succeeded job clustered again at another k, without training.

The re-clustering is a job of its own (every per-job route works for it) that shares its
source's images and saved representation; a worker process that serves only re-clusterings
runs it (store.queue.RECLUSTER_JOB), so it never waits behind training jobs.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.deps import Caller, CallerDep, JobDep, SessionDep, SettingsDep
from api.errors import ProblemError
from api.openapi import job_links, problems
from api.routes.results import require_results
from api.schemas import JobOut, ReclusterParams, job_out
from api.submission import check_active_limit, enqueue, idempotent_earlier
from store import blobs, jobs
from store.models import Job
from store.settings import Settings

router = APIRouter(prefix="/jobs/{job_id}", tags=["jobs"])


@router.post(
    "/reclusterings",
    status_code=202,
    response_model=JobOut,
    responses={
        202: {
            "description": "Queued (or the re-clustering an earlier request with this Idempotency-Key made)",
            "headers": {"Location": {"required": True, "schema": {"type": "string"},
                                     "description": "/jobs/{id} of the re-clustering"}},
            "links": job_links("$response.body#/id"),
        },
        **problems(401, 404, 409, 422, 429, 503, notes={
            409: "it has not succeeded (job_not_succeeded), or it finished before its representation "
            "was kept (job_not_reclusterable)",
            422: "k out of range (invalid_request), above the images the job clustered "
            "(too_few_images), or an Idempotency-Key reused for another request",
            503: "also when the job queue cannot be reached (broker_unavailable; nothing is kept)",
        }),
    },
)
def create_reclustering(
    request: Request,
    response: Response,
    job: JobDep,
    body: ReclusterParams,
    session: SessionDep,
    settings: SettingsDep,
    caller: CallerDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JobOut:
    """Cluster a succeeded job's images again at `k` from its trained representation (no
    retraining): a new job with its own clusters, assignments, exports, metrics and model."""
    request_hash = hashlib.sha256(json.dumps({"source": str(job.id), "k": body.k}).encode()).hexdigest()
    earlier = None if not idempotency_key else idempotent_earlier(
        session, owner_id=caller.key_id, key=idempotency_key, request_hash=request_hash)
    if earlier is None:
        _check(job, body.k, settings, session, caller)
        earlier = _create(session, job, body.k, caller, idempotency_key, request_hash)
        enqueue(request.app.state.celery, settings, request.app.state.sessions, earlier)
    response.headers["Location"] = f"/jobs/{earlier.id}"
    return job_out(earlier)


def _check(job: Job, k: int, settings: Settings, session: Session, caller: Caller) -> None:
    require_results(job)
    if not blobs.embeddings_path(settings, job.images_job_id).is_file():
        raise ProblemError(
            409,
            "job_not_reclusterable",
            "Nothing to re-cluster",
            f"job {job.id} finished before its representation (embeddings) was kept; run it again",
        )
    clustered = job.n_clustered or 0
    if k > clustered:
        raise ProblemError(
            422,
            "too_few_images",
            "Too few images",
            f"job {job.id} clustered {clustered} image(s); k={k} clusters need at least {k}",
            errors=[{"field": "k", "message": f"at most {clustered}, the images the job clustered"}],
            images=clustered,
            k=k,
        )
    check_active_limit(session, settings, caller.key_id)

def _create(
    session: Session, source: Job, k: int, caller: Caller, key: str | None, request_hash: str
) -> Job:
    try:
        job = jobs.create_reclustering(
            session, source=source, k=k, owner_id=caller.key_id, idempotency_key=key or None,
            request_hash=request_hash if key else None,
        )
        session.commit()
    except IntegrityError:  # the same key, committed by a concurrent request meanwhile
        session.rollback()
        earlier = None if not key else idempotent_earlier(
            session, owner_id=caller.key_id, key=key, request_hash=request_hash)
        if earlier is None:
            raise
        return earlier
    return job

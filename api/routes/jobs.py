"""/jobs: submit, list, show, cancel, delete."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, File, Form, Header, Query, Request, Response, UploadFile
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api import cursors
from api.deps import (
    CallerDep,
    CallerLookup,
    CallerLookupDep,
    JobDep,
    JobLookup,
    JobLookupDep,
    SessionDep,
    SettingsDep,
    close_session,
)
from api.errors import ProblemError, params_problem
from api.openapi import BAD_CURSOR, BAD_MULTIPART, CURSOR, job_links, json_part, problems
from api.schemas import JobDetail, JobOut, JobPage, JobParams, job_detail, job_out, job_view
from api.submission import Submission, check_active_limit, submit_job
from store import blobs, jobs
from store.models import Job, JobState

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    responses={
        202: {
            "description": "Queued (or the job an earlier request with this Idempotency-Key made)",
            "headers": {"Location": {"required": True, "schema": {"type": "string"},
                                     "description": "/jobs/{id}"}},
            "links": job_links("$response.body#/id"),
        },
        **problems(400, 401, 413, 415, 422, 429, 503, notes={
            **BAD_MULTIPART,
            413: "the archive (archive_too_large) or the whole body (body_too_large)",
            422: "params (invalid_params); a corrupt archive, a zip bomb, too many entries, no "
            "readable image, fewer images than k (too_few_images); an Idempotency-Key reused "
            "for another request",
            503: "also when the job queue cannot be (broker_unavailable; the job is not kept)",
        }),
    },
    # `params` is one JSON part; documenting it as the object lets a client (and a fuzzer) build it.
    openapi_extra={"requestBody": {"content": {"multipart/form-data": {
        "encoding": {"params": {"contentType": "application/json"}}}}}},
)
async def create_job(
    request: Request,
    response: Response,
    settings: SettingsDep,
    session: SessionDep,
    caller: CallerDep,
    archive: Annotated[UploadFile, File(description="zip, tar or tar.gz of images")],
    params: Annotated[str, Form(description='JSON object, e.g. {"k": 10, "method": "kmeans"}',
                                json_schema_extra=json_part(JobParams))],
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JobOut:
    """Upload an archive and queue a clustering job; answers 202 with Location."""
    parsed = _parse_params(params)
    check_active_limit(session, settings, caller.key_id)
    close_session(session)  # the upload can take minutes; hold no connection or seat meanwhile
    submission = Submission(parsed, archive, caller.key_id, idempotency_key)
    job, _ = await submit_job(
        submission,
        settings=settings,
        sessions=request.app.state.sessions,
        celery=request.app.state.celery,
    )
    response.headers["Location"] = f"/jobs/{job.id}"
    return job_out(job)


def _parse_params(raw: str) -> JobParams:
    try:
        data = json.loads(raw)
    except ValueError as error:
        raise ProblemError(
            422,
            "invalid_params",
            "Invalid job parameters",
            f"params: not valid JSON ({error})",
            errors=[{"field": "params", "message": "not valid JSON"}],
        ) from error
    if not isinstance(data, dict):
        raise ProblemError(
            422,
            "invalid_params",
            "Invalid job parameters",
            "params: must be a JSON object",
            errors=[{"field": "params", "message": "must be a JSON object"}],
        )
    try:
        return JobParams.model_validate(data)
    except ValidationError as error:
        raise params_problem(error) from error


@router.get(
    "",
    response_model=JobPage,
    responses={
        200: {"links": job_links("$response.body#/items/0/id")},
        **problems(400, 401, 422, 503, notes=BAD_CURSOR),
    },
)
async def list_jobs(
    session: SessionDep,
    find_caller: CallerLookupDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200, description=CURSOR)] = None,
) -> JobPage:
    """Jobs newest first; pass `next_cursor` back as `cursor` for the next page."""
    before = None
    if cursor:
        created_at, job_id = cursors.decode(cursor, datetime.fromisoformat, uuid.UUID)
        before = (created_at, job_id)
    # async, all its reads in one thread-pool call: each hop costs more under load than a query
    rows = await run_in_threadpool(_page, find_caller, session, limit + 1, before)
    page, more = rows[:limit], len(rows) > limit
    next_cursor = (
        cursors.encode(page[-1].created_at.isoformat(), str(page[-1].id)) if more else None
    )
    return JobPage.model_validate({"items": [job_view(job) for job in page], "next_cursor": next_cursor})


def _page(
    find_caller: CallerLookup, session: Session, limit: int, before: tuple[datetime, uuid.UUID] | None
) -> list[Job]:
    owner_id = find_caller().key_id
    return jobs.list_jobs(session, limit=limit, before=before, owner_id=owner_id)


@router.get(
    "/{job_id}",
    response_model=JobDetail,
    responses={200: {"links": job_links("$request.path.job_id")}, **problems(401, 404, 503)},
)
async def get_job(find_job: JobLookupDep, session: SessionDep) -> JobDetail:
    """State, progress, counts, params, timings, metrics and error of one job; how k was chosen
    when it was omitted; the re-clusterings made from it, or the job a re-clustering came from."""
    # async, all its reads in one thread-pool call: each hop costs more under load than a query
    job, reclusterings = await run_in_threadpool(_with_reclusterings, find_job, session)
    return job_detail(job, reclusterings)


def _with_reclusterings(find_job: JobLookup, session: Session) -> tuple[Job, list[Job]]:
    job = find_job()
    return job, jobs.list_reclusterings(session, job_id=job.id)


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    status_code=202,
    responses={
        202: {"description": "Cancelled (queued), or cancelling at the next epoch (running)"},
        **problems(401, 404, 409, 503, notes={409: "it has finished (job_finished)"}),
    },
)
def cancel_job(job: JobDep, session: SessionDep) -> JobOut:
    """Queued jobs are cancelled at once; running ones stop at their next epoch."""
    if not jobs.request_cancel(session, job=job):
        raise ProblemError(
            409,
            "job_finished",
            "Job already finished",
            f"job {job.id} is {job.state}; only queued or running jobs can be cancelled",
            state=job.state,
        )
    session.commit()
    return job_out(job)


@router.delete(
    "/{job_id}",
    status_code=204,
    responses={
        204: {"description": "Deleted: the job, its results, its re-clusterings and its files"},
        **problems(401, 404, 409, 503, notes={
            409: "it, or a re-clustering of it, is running; cancel that first (job_running)"}),
    },
)
def delete_job(job: JobDep, session: SessionDep, settings: SettingsDep) -> Response:
    """Remove a job, its rows, its re-clusterings and its files; a running job (or one with a
    running re-clustering) must be cancelled first. A re-clustering's source is untouched."""
    if job.state in (JobState.RUNNING, JobState.CANCELLING):
        raise ProblemError(
            409,
            "job_running",
            "Job is running",
            f"job {job.id} is {job.state}; cancel it and wait until it stops",
            state=job.state,
        )
    job_id = job.id
    deleted = jobs.delete_job(session, job=job)
    if deleted is None:
        raise ProblemError(
            409,
            "job_running",
            "Job is running",
            f"job {job_id} or a re-clustering of it is running; cancel it and wait until it stops",
        )
    session.commit()
    for gone in deleted:
        blobs.delete_job_files(settings, gone)
    return Response(status_code=204)

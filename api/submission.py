"""POST /jobs end to end: stream, check, record, enqueue. A refused upload leaves nothing behind."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

from celery import Celery
from fastapi import UploadFile
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api.errors import ProblemError
from api.intake import IntakeLimits, IntakeResult, extract_images, save_upload
from api.schemas import JobParams
from core.config import BOUNDS
from store import blobs, jobs, queue
from store.models import Job
from store.settings import Settings

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Submission:
    params: JobParams
    archive: UploadFile
    owner_id: uuid.UUID | None
    idempotency_key: str | None


def intake_limits(settings: Settings) -> IntakeLimits:
    return IntakeLimits(
        max_upload_bytes=settings.max_upload_bytes,
        max_entries=settings.max_entries,
        max_member_bytes=settings.max_member_bytes,
        max_total_bytes=settings.max_total_bytes,
        max_ratio=settings.max_ratio,
        max_pixels=settings.max_pixels,
    )


async def submit_job(
    submission: Submission,
    *,
    settings: Settings,
    sessions: sessionmaker[Session],
    celery: Celery,
) -> tuple[Job, bool]:
    """The queued job and whether it is new (False: an idempotent retry of an earlier one)."""
    job_id = uuid.uuid4()
    blobs.new_job_dir(settings, job_id)
    committed = False
    try:
        digest = hashlib.sha256(json.dumps(submission.params.model_dump(), sort_keys=True).encode())
        upload = blobs.upload_path(settings, job_id)
        await save_upload(
            _chunks(submission.archive, digest), upload, max_bytes=settings.max_upload_bytes
        )
        request_hash = digest.hexdigest()
        if submission.idempotency_key:
            earlier = _earlier(sessions, submission, request_hash)
            if earlier is not None:
                blobs.delete_job_files(settings, job_id)
                return earlier, False
        result = await run_in_threadpool(
            extract_images, upload, blobs.images_dir(settings, job_id), intake_limits(settings)
        )
        upload.unlink(missing_ok=True)
        skipped = [{"path": s.path, "reason": s.reason} for s in result.skipped]
        needed = submission.params.k_fixed or BOUNDS["k"][0]  # a chosen k is at least the lowest
        if len(result.images) < needed:
            raise _too_few(submission.params.k_fixed, needed, len(result.images), skipped)
        # 70,000 rows take about half a second to write: off the event loop, like the intake
        job = await run_in_threadpool(
            _record, sessions, submission, job_id, result, skipped, request_hash
        )
        committed = True
        enqueue(celery, settings, sessions, job)
        return job, True
    except BaseException:
        if not committed:
            blobs.delete_job_files(settings, job_id)
        raise


def _record(
    sessions: sessionmaker[Session],
    submission: Submission,
    job_id: uuid.UUID,
    result: IntakeResult,
    skipped: list[dict[str, str]],
    request_hash: str,
) -> Job:
    """Commit the job and its image rows in one transaction."""
    with sessions() as session, session.begin():
        return jobs.create_job(
            session,
            job_id=job_id,
            params=submission.params.cluster_config(),
            archive_format=result.archive_format,
            archive_entries=result.entries,
            images=result.images,
            skipped=skipped,
            name=submission.params.name,
            owner_id=submission.owner_id,
            idempotency_key=submission.idempotency_key,
            request_hash=request_hash if submission.idempotency_key else None,
        )


async def _chunks(archive: UploadFile, digest: hashlib._Hash) -> AsyncIterator[bytes]:
    while chunk := await archive.read(CHUNK):
        digest.update(chunk)
        yield chunk


def _earlier(
    sessions: sessionmaker[Session], submission: Submission, request_hash: str
) -> Job | None:
    assert submission.idempotency_key is not None
    with sessions() as session:
        return idempotent_earlier(
            session, owner_id=submission.owner_id, key=submission.idempotency_key, request_hash=request_hash
        )


def idempotent_earlier(
    session: Session, *, owner_id: uuid.UUID | None, key: str, request_hash: str
) -> Job | None:
    """The job an earlier request with this Idempotency-Key made; 422 when that was another request."""
    earlier = jobs.find_idempotent(session, owner_id=owner_id, key=key)
    if earlier is not None and earlier.request_hash != request_hash:
        raise ProblemError(
            422,
            "idempotency_key_reused",
            "Idempotency-Key reused",
            "this Idempotency-Key was used for a different request; use a new key",
        )
    return earlier


def check_active_limit(session: Session, settings: Settings, owner_id: uuid.UUID | None) -> None:
    """429 when the caller's key already has its CORRAL_MAX_ACTIVE_JOBS_PER_KEY jobs queued or running."""
    if owner_id is None:
        return
    active = jobs.count_active(session, owner_id=owner_id)
    if active >= settings.max_active_jobs_per_key:
        raise ProblemError(
            429,
            "too_many_active_jobs",
            "Too many active jobs",
            f"this key has {active} queued or running jobs (limit "
            f"{settings.max_active_jobs_per_key}); wait for one to finish",
            headers={"Retry-After": "30"},
        )


def _too_few(k: int | None, needed: int, n_images: int, skipped: list[dict[str, str]]) -> ProblemError:
    reasons = dict(Counter(entry["reason"] for entry in skipped))
    wanted = f"k={k} clusters" if k is not None else "choosing k"
    return ProblemError(
        422,
        "too_few_images",
        "Too few readable images",
        f"the archive has {n_images} readable image(s) but {wanted} needs at least {needed}",
        images=n_images,
        skipped=len(skipped),
        skipped_by_reason=reasons,
        k=k,
    )


def enqueue(celery: Celery, settings: Settings, sessions: sessionmaker[Session], job: Job) -> None:
    """Enqueue after commit; if the broker is down, undo the job so the client can retry."""
    try:
        queue.enqueue_job(celery, settings, job.id, recluster=job.source_job_id is not None)
    except Exception as error:
        log.warning("broker unavailable, job %s withdrawn: %s", job.id, error)
        with sessions() as session, session.begin():
            row = jobs.get_job(session, job_id=job.id)
            if row is not None:
                jobs.delete_job(session, job=row)
        blobs.delete_job_files(settings, job.id)
        raise ProblemError(
            503,
            "broker_unavailable",
            "Queue unavailable",
            "the job queue cannot be reached; retry later",
            headers={"Retry-After": "5"},
        ) from error

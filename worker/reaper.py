"""Keep every job moving: requeue (or fail) running jobs whose worker went silent, and send
again the queued jobs whose run message the broker no longer holds."""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import timedelta

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from store import jobs, queue
from store.db import transaction
from store.models import JobState, utcnow
from store.settings import Settings

log = logging.getLogger(__name__)


def worker_lost_error(attempts: int) -> dict[str, object]:
    return jobs.problem(
        "worker_lost",
        "Worker lost",
        500,
        f"the worker running this job stopped {attempts} time(s) without finishing it; "
        "giving up (CORRAL_MAX_ATTEMPTS)",
    )


def reap(sessions: sessionmaker[Session], settings: Settings, celery: Celery) -> list[uuid.UUID]:
    """One pass; returns the ids of the jobs requeued."""
    cutoff = utcnow() - timedelta(seconds=settings.stale_after_s)
    requeued = []
    with transaction(sessions) as session:
        for job in jobs.stale_jobs(session, heartbeat_before=cutoff):
            if job.state == JobState.CANCELLING:
                done = jobs.reap_job(
                    session,
                    job=job,
                    heartbeat_before=cutoff,
                    state=JobState.CANCELLED,
                    finished_at=utcnow(),
                )
            elif job.attempts >= settings.max_attempts:
                done = jobs.reap_job(
                    session,
                    job=job,
                    heartbeat_before=cutoff,
                    state=JobState.FAILED,
                    finished_at=utcnow(),
                    error=worker_lost_error(job.attempts),
                )
            else:
                done = jobs.reap_job(
                    session, job=job, heartbeat_before=cutoff, state=JobState.QUEUED, worker_id=None
                )
                if done:
                    requeued.append(job.id)
            if done:
                log.warning("reaped job %s (was %s, attempts %d)", job.id, job.state, job.attempts)
    for job_id in requeued:  # after commit, so the message never outruns the row
        queue.enqueue_job(celery, settings, job_id)
    return requeued


def resend_lost(
    sessions: sessionmaker[Session], settings: Settings, celery: Celery
) -> list[uuid.UUID]:
    """One pass; returns the ids of the queued jobs whose message was sent again."""
    pending = queue.pending_job_ids(settings)  # before the rows: a job claimed meanwhile is safe
    cutoff = utcnow() - timedelta(seconds=settings.resend_queued_after_s)
    resent = []
    with transaction(sessions) as session:
        for job in jobs.waiting_jobs(session, updated_before=cutoff):
            if pending is not None and job.id in pending:
                continue
            if jobs.touch_queued(session, job=job, updated_before=cutoff):
                resent.append(job.id)
    for job_id in resent:  # after commit, as in reap()
        log.warning("job %s queued without a broker message; sending it again", job_id)
        queue.enqueue_job(celery, settings, job_id)
    return resent


def start_reaper(
    sessions: sessionmaker[Session], settings: Settings, celery: Celery
) -> threading.Event:
    """Reap now and then every `reaper_interval_s` in a daemon thread; set the event to stop."""
    stop = threading.Event()

    def loop() -> None:
        while True:
            for one_pass in (reap, resend_lost):
                try:
                    one_pass(sessions, settings, celery)
                except Exception:  # the database or broker may be briefly down; try next round
                    log.exception("reaper pass %s failed", one_pass.__name__)
            if stop.wait(settings.reaper_interval_s):
                return

    threading.Thread(target=loop, name="corral-reaper", daemon=True).start()
    return stop

"""Keep every job moving: requeue (or fail) running jobs whose worker went silent, and send
again the queued jobs whose run message the broker no longer holds."""

from __future__ import annotations

import functools
import logging
import os
import threading
import uuid
from collections.abc import Callable, Sequence
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
    requeued: list[tuple[uuid.UUID, bool]] = []  # (job id, is a re-clustering)
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
                    requeued.append((job.id, job.source_job_id is not None))
            if done:
                log.warning("reaped job %s (was %s, attempts %d)", job.id, job.state, job.attempts)
    for job_id, recluster in requeued:  # after commit, so the message never outruns the row
        queue.enqueue_job(celery, settings, job_id, recluster=recluster)
    return [job_id for job_id, _ in requeued]


def resend_lost(
    sessions: sessionmaker[Session], settings: Settings, celery: Celery
) -> list[uuid.UUID]:
    """One pass; returns the ids of the queued jobs whose message was sent again."""
    pending = queue.pending_job_ids(settings)  # before the rows: a job claimed meanwhile is safe
    cutoff = utcnow() - timedelta(seconds=settings.resend_queued_after_s)
    resent: list[tuple[uuid.UUID, bool]] = []  # (job id, is a re-clustering)
    with transaction(sessions) as session:
        for job in jobs.waiting_jobs(session, updated_before=cutoff):
            if pending is not None and job.id in pending:
                continue
            if jobs.touch_queued(session, job=job, updated_before=cutoff):
                resent.append((job.id, job.source_job_id is not None))
    for job_id, recluster in resent:  # after commit, as in reap()
        log.warning("job %s queued without a broker message; sending it again", job_id)
        queue.enqueue_job(celery, settings, job_id, recluster=recluster)
    return [job_id for job_id, _ in resent]


@functools.cache
def fork_guard() -> threading.RLock:
    """A lock each reaper pass holds, which every fork of this process takes first.

    The reaper runs in the Celery parent, which forks a fresh child for every job. A fork copies
    only the forking thread: a lock another thread holds at that moment stays held in the child
    forever. SQLite's internal mutexes are such locks, so a child forked while a pass was opening
    its connection hung in its own first connect (seen in CI: a job received, never claimed).
    With the guard a fork waits for the pass to end (at most one pass) and never lands inside it.
    Re-entrant, so that a pass which itself forked would not wait on its own lock.
    """
    lock = threading.RLock()
    os.register_at_fork(before=lock.acquire, after_in_parent=lock.release, after_in_child=lock.release)
    return lock


ReaperPass = Callable[[sessionmaker[Session], Settings, Celery], object]


def start_reaper(
    sessions: sessionmaker[Session],
    settings: Settings,
    celery: Celery,
    passes: Sequence[ReaperPass] = (reap, resend_lost),
) -> threading.Event:
    """Reap now and then every `reaper_interval_s` in a daemon thread; set the event to stop."""
    stop = threading.Event()
    guard = fork_guard()

    def loop() -> None:
        while True:
            for one_pass in passes:
                try:
                    with guard:
                        one_pass(sessions, settings, celery)
                except Exception:  # the database or broker may be briefly down; try next round
                    log.exception("reaper pass %s failed", getattr(one_pass, "__name__", one_pass))
            if stop.wait(settings.reaper_interval_s):
                return

    threading.Thread(target=loop, name="corral-reaper", daemon=True).start()
    return stop

"""The Celery tasks: run a job, run a re-clustering. Thin: the work is worker.run.execute_job,
which branches on the job row (a re-clustering has a source job)."""

from __future__ import annotations

import uuid

from celery import Task, shared_task
from sqlalchemy.orm import Session, sessionmaker

from store.queue import RECLUSTER_JOB, RUN_JOB
from store.settings import Settings
from worker.app import settings_of

_SESSIONS: dict[str, sessionmaker[Session]] = {}  # per process, by database URL


@shared_task(bind=True, name=RUN_JOB)
def run_job(self: Task, job_id: str) -> str:
    """Claim and run one job; returns the outcome (succeeded, failed, cancelled, skipped...)."""
    from worker.run import execute_job  # imports torch: only in the forked child, never before

    return execute_job(uuid.UUID(job_id), settings=settings_of(self.app))


@shared_task(bind=True, name=RECLUSTER_JOB)
def recluster_job(self: Task, job_id: str) -> str:
    """The same for a re-clustering, in a child that runs many: its engine is kept, not rebuilt."""
    from worker.run import execute_job

    settings = settings_of(self.app)
    return execute_job(uuid.UUID(job_id), settings=settings, sessions=_sessions(settings))


def _sessions(settings: Settings) -> sessionmaker[Session]:
    from store.db import make_engine, make_sessionmaker

    if settings.database_url not in _SESSIONS:
        _SESSIONS[settings.database_url] = make_sessionmaker(make_engine(settings))
    return _SESSIONS[settings.database_url]

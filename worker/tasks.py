"""The one Celery task: run a job. Thin: the work is worker.run.execute_job."""

from __future__ import annotations

import uuid

from celery import Task, shared_task

from store.queue import RUN_JOB
from worker.app import settings_of


@shared_task(bind=True, name=RUN_JOB)
def run_job(self: Task, job_id: str) -> str:
    """Claim and run one job; returns the outcome (succeeded, failed, cancelled, skipped...)."""
    from worker.run import execute_job  # imports torch: only in the forked child, never before

    return execute_job(uuid.UUID(job_id), settings=settings_of(self.app))

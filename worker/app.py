"""The Celery app of the worker, built from settings.

Long GPU jobs shape every option: a job's message is acknowledged only after it finished
(late acks) and requeued if its process dies (reject on worker lost); a worker takes one
message at a time (prefetch 1) and runs each job in a fresh child process (max tasks per
child 1), so GPU memory is returned and CUDA is only ever initialised after the fork: the
parent never imports torch (worker.tasks imports the runner inside the task).
"""

from __future__ import annotations

from celery import Celery

from store.queue import make_celery
from store.settings import Settings

SOFT_LIMIT_MARGIN_S = 60  # the job gets this long to record "time limit" before the hard kill


def create_celery_app(settings: Settings) -> Celery:
    app = make_celery(settings)
    app.conf.update(
        include=["worker.tasks"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=1,
        task_time_limit=settings.task_time_limit_s,
        task_soft_time_limit=max(1, settings.task_time_limit_s - SOFT_LIMIT_MARGIN_S),
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        corral_settings=settings,  # read by the task; the child inherits it through the fork
    )
    return app


def settings_of(app: Celery) -> Settings:
    settings = app.conf.get("corral_settings")
    if not isinstance(settings, Settings):
        raise RuntimeError("Celery app was not built by worker.app.create_celery_app")
    return settings

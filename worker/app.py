"""The Celery apps of the worker, built from settings.

Long GPU jobs shape every option of the training worker: a job's message is acknowledged only
after it finished (late acks) and requeued if its process dies (reject on worker lost); a worker
takes one message at a time (prefetch 1) and runs each job in a fresh child process (max tasks
per child 1), so GPU memory is returned and CUDA is only ever initialised after the fork: the
parent never imports torch (worker.tasks imports the runner inside the task).

The re-clustering worker (its own queue, `corral worker` runs it beside the training one) keeps
the same delivery guarantees, but its one child lives on with the runner, torch and sklearn
imported once at its start: a re-clustering takes seconds, and a fresh import would be most of
them. It never touches a GPU.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_process_init

from store.queue import make_celery
from store.settings import Settings

SOFT_LIMIT_MARGIN_S = 60  # the job gets this long to record "time limit" before the hard kill
RECLUSTER_POLL_S = 0.1  # the filesystem broker's polling: re-clusterings are picked up at once
CHILD_START_S = 120  # the re-clustering child imports torch before it says it is alive


def create_celery_app(settings: Settings, *, recluster: bool = False) -> Celery:
    app = make_celery(settings)
    app.conf.update(
        include=["worker.tasks"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=None if recluster else 1,
        task_time_limit=settings.task_time_limit_s,
        task_soft_time_limit=max(1, settings.task_time_limit_s - SOFT_LIMIT_MARGIN_S),
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        corral_settings=settings,  # read by the task; the child inherits it through the fork
    )
    if recluster:
        app.conf.worker_proc_alive_timeout = CHILD_START_S
        if settings.is_filesystem_broker:
            options = dict(app.conf.broker_transport_options)
            app.conf.broker_transport_options = options | {"polling_interval": RECLUSTER_POLL_S}
        worker_process_init.connect(_import_runner, weak=False)
    return app


def _import_runner(**_: Any) -> None:
    from worker.recluster import warm_up  # torch, sklearn and core, once per child

    warm_up()


def settings_of(app: Celery) -> Settings:
    settings = app.conf.get("corral_settings")
    if not isinstance(settings, Settings):
        raise RuntimeError("Celery app was not built by worker.app.create_celery_app")
    return settings

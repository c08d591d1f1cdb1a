"""The Celery client shared by the API (enqueues) and the worker (consumes).

Only the message contract lives here: the task name and the broker configuration. The task
itself is in worker/tasks.py; the API never imports the worker.
"""

from __future__ import annotations

import uuid
from typing import Any

from celery import Celery
from kombu import Connection

from store.settings import Settings

RUN_JOB = "corral.run_job"


def celery_config(settings: Settings) -> dict[str, Any]:
    """Broker settings both sides must agree on."""
    options: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout_s}
    if settings.broker_url.startswith("filesystem"):
        options.update(_filesystem_folders(settings))
    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": options,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 5,
        "task_default_queue": settings.queue_name,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
    }


def _filesystem_folders(settings: Settings) -> dict[str, Any]:
    # One folder as both `in` and `out`: producer and consumer share the queue files.
    queue = settings.broker_dir / "queue"
    control = settings.broker_dir / "control"
    for folder in (queue, control):
        folder.mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(queue),
        "data_folder_out": str(queue),
        "control_folder": str(control),
        "store_processed": False,
    }


def make_celery(settings: Settings) -> Celery:
    app = Celery("corral", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def enqueue_job(celery: Celery, settings: Settings, job_id: uuid.UUID) -> None:
    """Send the run message; call only after the job's row is committed."""
    celery.send_task(RUN_JOB, args=[str(job_id)], queue=settings.queue_name)


def broker_reachable(settings: Settings, *, timeout_s: float = 2.0) -> bool:
    options = celery_config(settings)["broker_transport_options"]
    try:
        with Connection(
            settings.broker_url, transport_options=options, connect_timeout=timeout_s
        ) as connection:
            connection.ensure_connection(max_retries=0, timeout=timeout_s)
        return True
    except Exception:  # any failure to connect means "not ready"
        return False

"""The Celery client shared by the API (enqueues) and the worker (consumes).

Only the message contract lives here: the task name and the broker configuration. The task
itself is in worker/tasks.py; the API never imports the worker.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Connection
from kombu.utils.url import maybe_sanitize_url

from store import filesystem_broker
from store.settings import Settings

RUN_JOB = "corral.run_job"
# A re-clustering runs in seconds: its own task on its own queue, so that it never waits behind
# hours of training on a prefetch-1 worker (`corral worker` consumes both queues, each in its
# own process). The task body is the same; the worker branches on the job row.
RECLUSTER_JOB = "corral.recluster_job"
TASKS = (RUN_JOB, RECLUSTER_JOB)


def celery_config(settings: Settings) -> dict[str, Any]:
    """Broker settings both sides must agree on."""
    options: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout_s}
    if settings.is_filesystem_broker:
        options.update(_filesystem_folders(settings))
    return {
        "broker_url": settings.broker_url,
        "broker_transport": broker_transport(settings),
        "broker_transport_options": options,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 5,
        "task_default_queue": settings.queue_name,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
    }


def broker_transport(settings: Settings) -> type[filesystem_broker.Transport] | None:
    """The kombu transport for the broker URL; None lets kombu pick it by the URL's scheme.

    `filesystem://` gets ours (files appear whole, see store/filesystem_broker.py): an explicit
    transport takes precedence over the scheme in kombu's Connection and Celery's
    `broker_transport`, so the URL users set and see stays `filesystem://`.
    """
    return filesystem_broker.Transport if settings.is_filesystem_broker else None


def broker_connection(settings: Settings, **kwargs: Any) -> Connection:
    """A kombu connection to the broker as the Celery apps make it (transport and options)."""
    options = celery_config(settings)["broker_transport_options"]
    return Connection(
        settings.broker_url, transport=broker_transport(settings), transport_options=options, **kwargs
    )


def _filesystem_folders(settings: Settings) -> dict[str, Any]:
    # One folder as both `in` and `out`: producer and consumer share the queue files. Staging
    # holds files being written or claimed: on the queue's filesystem (renames are atomic only
    # within one) and outside the queue folder, where `pending_job_ids` counts `*.msg`.
    folders = {
        name: settings.broker_dir / name for name in ("queue", "control", "staging", "rejected")
    }
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(folders["queue"]),
        "data_folder_out": str(folders["queue"]),
        "control_folder": str(folders["control"]),
        "staging_folder": str(folders["staging"]),
        "rejected_folder": str(folders["rejected"]),
        "store_processed": False,
    }


def make_celery(settings: Settings) -> Celery:
    app = Celery("corral", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def enqueue_job(celery: Celery, settings: Settings, job_id: uuid.UUID, *, recluster: bool = False) -> None:
    """Send the run message (a re-clustering's to its own queue); only after the row is committed."""
    if recluster:
        celery.send_task(RECLUSTER_JOB, args=[str(job_id)], queue=settings.recluster_queue_name)
    else:
        celery.send_task(RUN_JOB, args=[str(job_id)], queue=settings.queue_name)


def broker_reachable(settings: Settings, *, timeout_s: float = 2.0) -> bool:
    return broker_error(settings, timeout_s=timeout_s) is None


def broker_error(settings: Settings, *, timeout_s: float = 2.0) -> str | None:
    """None when the broker answers, else the reason it did not (one line)."""
    try:
        with broker_connection(settings, connect_timeout=timeout_s) as connection:
            connection.ensure_connection(max_retries=0, timeout=timeout_s)
        return None
    except Exception as error:  # any failure to connect means "not ready"
        return " ".join(str(error).split()) or type(error).__name__


def shown_broker_url(settings: Settings) -> str:
    """The broker URL with any password masked, for messages and logs."""
    url = settings.broker_url
    return str(maybe_sanitize_url(url)) if "@" in url else url


def pending_job_ids(settings: Settings) -> set[uuid.UUID] | None:
    """Job ids with a run message waiting in the broker or delivered but not yet acknowledged.

    None when this transport cannot be inspected (the caller then treats every old queued job
    as possibly lost). A duplicate message is harmless: the claim is a compare-and-set.
    """
    if settings.is_filesystem_broker:
        return _job_ids(_queued_files(settings.broker_dir / "queue"))
    if settings.broker_url.startswith(("redis://", "rediss://")):
        return _redis_pending(settings)
    return None


def _queued_files(folder: Path) -> list[bytes]:
    """Each message file's bytes (written whole, store/filesystem_broker.py); one a consumer
    claims between the listing and the read is skipped."""
    payloads = []
    for path in folder.glob("*.msg"):
        try:
            payloads.append(path.read_bytes())
        except (FileNotFoundError, IsADirectoryError):
            continue
    return payloads


def _redis_pending(settings: Settings) -> set[uuid.UUID]:
    import redis

    client = redis.Redis.from_url(settings.broker_url, socket_timeout=5)
    try:
        payloads: list[bytes] = []
        # kombu keeps one list per priority step: `queue`, `queue\x06\x163`, ...
        keys = {
            key
            for name in (settings.queue_name, settings.recluster_queue_name)
            for key in client.scan_iter(match=f"{name}*", count=1000)
        }
        for key in keys:
            if client.type(key) == b"list":
                payloads.extend(item for item in client.lrange(key, 0, -1) if isinstance(item, bytes))
        # Delivered, not yet acked (late acks): values are [message, exchange, routing_key].
        for raw in client.hvals("unacked"):
            try:
                payloads.append(json.dumps(json.loads(raw)[0]).encode())
            except (ValueError, IndexError, TypeError):
                continue
        return _job_ids(payloads)
    finally:
        client.close()


def _job_ids(payloads: list[bytes]) -> set[uuid.UUID]:
    found = set()
    for raw in payloads:
        job_id = _job_id_of(raw)
        if job_id is not None:
            found.add(job_id)
    return found


def _job_id_of(raw: bytes) -> uuid.UUID | None:
    """The job id of one kombu message (task protocol 2: body = [args, kwargs, embed])."""
    try:
        message = json.loads(raw)
        if message.get("headers", {}).get("task") not in TASKS:
            return None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return uuid.UUID(str(args[0]))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None

"""`execute_job`: claim one job, decode its images, cluster, write the result. Tests call it.

A job moves queued -> running (claimed by compare-and-set, attempts + 1) -> succeeded | failed |
cancelled. While it trains, a monitor thread writes heartbeat and progress once per
`progress_interval_s` and reads back the state, so the progress callback can stop the run when
cancellation was requested or when the reaper gave the job to another worker.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.orm import Session, sessionmaker

import core
from core.atomic import write_atomically
from core.config import ClusterConfig
from core.data.images import ImageSet, Opener, decode_sources
from core.errors import InvalidInput
from core.predict import save_model
from core.result import ClusterResult, Progress
from store import blobs, jobs, results
from store.db import make_engine, make_sessionmaker, transaction
from store.models import FINISHED_STATES, Image, Job, JobState, utcnow
from store.settings import Settings
from worker.reaper import worker_lost_error

log = logging.getLogger(__name__)


class JobCancelled(Exception):
    """Raised from the progress callback: the user cancelled the job."""


class JobLost(Exception):
    """Raised from the progress callback: this worker no longer owns the job."""


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def execute_job(
    job_id: uuid.UUID,
    *,
    settings: Settings,
    sessions: sessionmaker[Session] | None = None,
    worker_id: str | None = None,
) -> str:
    """Run one job to its end; returns the outcome. Safe to call for a duplicate message."""
    sessions = sessions or make_sessionmaker(make_engine(settings))
    worker_id = worker_id or worker_identity()
    with transaction(sessions) as session:
        outcome, job = claim(session, job_id=job_id, worker_id=worker_id, settings=settings)
    if job is None:
        log.info("job %s not run: %s", job_id, outcome)
        return outcome
    log.info("job %s claimed by %s (attempt %d)", job_id, worker_id, job.attempts)
    monitor = Monitor(sessions, job_id, worker_id, settings.progress_interval_s)
    try:
        with monitor:
            outcome = _run(
                job, settings=settings, sessions=sessions, worker_id=worker_id, monitor=monitor
            )
    except JobLost:
        log.warning("job %s was taken from this worker; stopping without writing", job_id)
        return "lost"
    except JobCancelled:
        outcome = _finish(sessions, job_id, worker_id, JobState.CANCELLED)
    except SoftTimeLimitExceeded:
        outcome = _fail(
            sessions,
            job_id,
            worker_id,
            "time_limit",
            "Time limit exceeded",
            f"the job ran longer than {settings.task_time_limit_s} s",
        )
    except InvalidInput as error:  # the user's images or parameters; core names the one at fault
        outcome = _fail(sessions, job_id, worker_id, "invalid_input", "Invalid input", str(error))
    except Exception as error:  # a bug, a full disk, a lost device: ours, with the traceback logged
        log.exception("job %s failed", job_id)
        outcome = _fail(
            sessions,
            job_id,
            worker_id,
            "worker_error",
            "Job failed",
            f"{type(error).__name__}: {error}",
        )
    blobs.checkpoint_path(settings, job_id).unlink(missing_ok=True)
    return outcome


def claim(
    session: Session, *, job_id: uuid.UUID, worker_id: str, settings: Settings
) -> tuple[str, Job | None]:
    """Take the job if it is queued, or running on a worker that is gone; else say why not."""
    job = jobs.get_job(session, job_id=job_id, refresh=True)
    if job is None:
        return "missing", None
    if job.state in FINISHED_STATES:
        return "already_finished", None
    if job.state != JobState.QUEUED and not owner_gone(job, settings):
        return "running_elsewhere", None
    if job.state == JobState.CANCELLING:
        jobs.finish_job(session, job_id=job_id, worker_id=None, state=JobState.CANCELLED)
        return JobState.CANCELLED, None
    if job.attempts >= settings.max_attempts:
        jobs.finish_job(
            session,
            job_id=job_id,
            worker_id=None,
            state=JobState.FAILED,
            error=worker_lost_error(job.attempts),
        )
        return JobState.FAILED, None
    if not jobs.claim_job(session, job=job, worker_id=worker_id):
        return "claimed_by_another", None
    return "claimed", job


def owner_gone(job: Job, settings: Settings) -> bool:
    """Silent for `stale_after_s`, or its process on this very host has exited."""
    if job.heartbeat_at is None or job.heartbeat_at < utcnow() - timedelta(
        seconds=settings.stale_after_s
    ):
        return True
    host, _, pid = (job.worker_id or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _run(
    job: Job,
    *,
    settings: Settings,
    sessions: sessionmaker[Session],
    worker_id: str,
    monitor: Monitor,
) -> str:
    if job.source_job_id is not None:
        from worker.recluster import run_reclustering  # it imports this module's helpers

        return run_reclustering(job, settings=settings, sessions=sessions, worker_id=worker_id, monitor=monitor)
    started = time.perf_counter()
    config = ClusterConfig.from_dict(job.params)
    with sessions() as session:
        images = jobs.list_images(session, job_id=job.id)
    image_set, kept, skipped = _decode(images, settings, job.id, config)
    decoded = time.perf_counter()
    monitor.update(Progress("setup", 0, config.epochs or 0))
    result = core.cluster(
        image_set.images,
        config,
        labels=image_set.labels,
        device=None if settings.device == "auto" else settings.device,
        on_progress=monitor.on_progress,
        checkpoint=blobs.checkpoint_path(settings, job.id),
    )
    monitor.stop()
    _save_outputs(result, kept, settings, job.id)
    k = len(result.centres)  # the chosen k when config.k was None
    with transaction(sessions) as session:
        write_started = time.perf_counter()
        results.write_results(
            session,
            job_id=job.id,
            images=kept,
            labels=result.labels.tolist(),
            confidences=result.confidences.tolist(),
            k=k,
        )
        timings = {
            "decode": decoded - started,
            **result.timings,
            "write": time.perf_counter() - write_started,
            "total": time.perf_counter() - started,
        }
        done = jobs.finish_job(
            session,
            job_id=job.id,
            worker_id=worker_id,
            state=JobState.SUCCEEDED,
            n_clustered=len(kept),
            k=k,
            k_selection=None if result.k_choice is None else result.k_choice.to_dict(),
            metrics=result.metrics,
            device=result.device,
            timings={key: round(float(value), 4) for key, value in timings.items()},
            resumed_from_epoch=result.resumed_from_epoch,
            stage="done",
            progress_metrics=monitor.written | {"method": result.config.method},  # also if no beat came
            skipped=list(job.skipped) + skipped,
            n_skipped=len(job.skipped) + len(skipped),
        )
        if not done:
            session.rollback()
            raise JobLost(str(job.id))
    return JobState.SUCCEEDED


def _save_outputs(result: ClusterResult, kept: list[Image], settings: Settings, job_id: uuid.UUID) -> None:
    """Embeddings and any calibration space (rows in upload order, as the assignments) and the
    model for predictions."""
    order = np.argsort([image.seq for image in kept], kind="stable")
    path = blobs.embeddings_path(settings, job_id)
    embeddings = result.embeddings[order].astype(np.float32)
    write_atomically(path, lambda handle: np.save(handle, embeddings))
    if result.calibration_space is not None:
        space = result.calibration_space[order].astype(np.float32)
        write_atomically(blobs.calibration_space_path(settings, job_id), lambda handle: np.save(handle, space))
    if result.predictor is not None:
        save_model(result, blobs.model_path(settings, job_id))


def _decode(
    images: list[Image], settings: Settings, job_id: uuid.UUID, config: ClusterConfig
) -> tuple[ImageSet, list[Image], list[dict[str, str]]]:
    """Decode once; returns the set, the image rows in result order, and decode-time skips."""
    by_path: dict[str, Image] = {}
    skipped = []
    for image in images:
        if image.path in by_path:  # an archive may hold one name twice; keep the first
            skipped.append({"path": image.path, "reason": "duplicate_path"})
        else:
            by_path[image.path] = image
    # an opener per image: decoding reads each image twice (header pass, then pixels)
    sources: dict[str, Opener] = {
        path: functools.partial(blobs.read_image, settings, job_id, row) for path, row in by_path.items()
    }
    image_set = decode_sources(sources, image_size=config.image_size, max_pixels=settings.max_pixels)
    skipped += [{"path": path, "reason": reason} for path, reason in image_set.skipped]
    if not image_set.paths:  # name why, where clustering would only say that none were given
        reasons = collections.Counter(skip["reason"] for skip in skipped)
        raise InvalidInput(f"none of the job's {len(images)} images could be decoded: "
                           + ", ".join(f"{count} {reason}" for reason, count in reasons.most_common()))
    return image_set, [by_path[path] for path in image_set.paths], skipped


def _finish(
    sessions: sessionmaker[Session],
    job_id: uuid.UUID,
    worker_id: str,
    state: JobState,
    **values: Any,
) -> str:
    with transaction(sessions) as session:
        jobs.finish_job(session, job_id=job_id, worker_id=worker_id, state=state, **values)
    return state


def _fail(
    sessions: sessionmaker[Session],
    job_id: uuid.UUID,
    worker_id: str,
    slug: str,
    title: str,
    detail: str,
) -> str:
    error = jobs.problem(slug, title, 500 if slug == "worker_error" else 422, detail)
    return _finish(sessions, job_id, worker_id, JobState.FAILED, error=error)


@dataclass
class Monitor:
    """Heartbeat + progress writer thread; `on_progress` is the callback handed to core."""

    sessions: sessionmaker[Session]
    job_id: uuid.UUID
    worker_id: str
    interval_s: float
    _latest: Progress | None = None
    written: dict[str, Any] = field(default_factory=dict)  # the progress_metrics last written
    _state: str | None = JobState.RUNNING
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Monitor:
        self._thread = threading.Thread(target=self._loop, name="corral-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def update(self, progress: Progress) -> None:
        self._latest = progress

    def on_progress(self, progress: Progress) -> None:
        """Record progress; raise to stop training when cancelled or taken away."""
        self._latest = progress
        if self._state is None:
            raise JobLost(str(self.job_id))
        if self._state == JobState.CANCELLING:
            raise JobCancelled(str(self.job_id))

    def _loop(self) -> None:
        while True:
            self._beat()
            if self._stop.wait(self.interval_s):
                return

    def _beat(self) -> None:
        progress = self._latest
        values, metrics = None, None
        if progress is not None:
            metrics = _progress_metrics(progress)
            values = {
                "stage": progress.stage,
                "epoch": progress.epoch,
                "epochs": progress.epochs,
                "progress_metrics": metrics,
            }
        try:
            with transaction(self.sessions) as session:
                self._state = jobs.beat(
                    session, job_id=self.job_id, worker_id=self.worker_id, progress=values
                )
            if metrics is not None:
                self.written = metrics
        except Exception:  # a database hiccup must not kill training; the next beat retries
            log.warning("heartbeat of job %s failed", self.job_id, exc_info=True)


def _progress_metrics(progress: Progress) -> dict[str, Any]:
    """A report's finite metrics and the method training (what method=auto settled on)."""
    return _finite(progress.metrics) | ({"method": progress.method} if progress.method else {})


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    return {
        key: float(value)
        for key, value in metrics.items()
        if value == value and abs(float(value)) != float("inf")
    }

"""A re-clustering: a finished job's saved representation clustered again at another k.

Nothing is trained and no image is decoded. The source's embeddings (rows in upload order, as
its assignments) and read-out go through `core.recluster.recluster` (a classifier head for
IMC-SwAV, k-means otherwise); the result is written as any job's (assignments, cluster
summaries, metrics against the class folders) and its model is the source's read-out with the
new head or centres (`core.recluster.reclustered_predictor`), so predict works.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from core.config import ClusterConfig
from core.data.images import folder_labels
from core.errors import InvalidInput
from core.predict import load_model, save_model
from core.recluster import recluster, reclustered_predictor
from core.result import Progress
from store import blobs, jobs, results
from store.db import transaction
from store.models import Job, JobState
from store.settings import Settings

if TYPE_CHECKING:
    from worker.run import Monitor

log = logging.getLogger(__name__)

STAGE = "recluster"


def warm_up() -> None:
    """Pay the first-call costs once, at the child's start: importing the read-out classes a
    model unpickles into (core.methods, torchvision), a first torch.save/load and a first k-means
    took 3-5 s of the first re-clustering (bench/recluster.py, a dry run)."""
    import io

    import torch

    import core.methods  # noqa: F401

    recluster(np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32), 2)
    buffer = io.BytesIO()
    torch.save({"module": torch.nn.Linear(2, 2)}, buffer)
    buffer.seek(0)
    torch.load(buffer, weights_only=False)


def run_reclustering(
    job: Job,
    *,
    settings: Settings,
    sessions: sessionmaker[Session],
    worker_id: str,
    monitor: Monitor,
) -> str:
    """Cluster the source's embeddings at the job's k; write the result as a succeeded job."""
    from worker.run import JobLost  # worker.run dispatches here: imported late, no cycle

    started = time.perf_counter()
    assert job.source_job_id is not None and job.k is not None
    monitor.update(Progress(STAGE, 0, 1))
    with sessions() as session:
        source = jobs.get_job(session, job_id=job.source_job_id)
        if source is None or source.state != JobState.SUCCEEDED:
            raise InvalidInput(f"the source job {job.source_job_id} has no result to re-cluster")
        images = results.clustered_images(session, job_id=source.id)
    path = blobs.embeddings_path(settings, source.id)
    if not path.is_file():
        raise InvalidInput(f"the source job {source.id} finished before embeddings were kept")
    embeddings = _rows(path, len(images))
    space_path = blobs.calibration_space_path(settings, source.id)  # MMDC's, IMC-SwAV's: where it calibrated
    space = _rows(space_path, len(images)) if space_path.is_file() else None
    if not 2 <= job.k <= len(images):
        raise InvalidInput(f"k={job.k} needs 2 <= k <= {len(images)}, the images the source clustered")
    truth, _ = folder_labels([image.path for image in images])
    source_model = blobs.model_path(settings, source.id)
    base = load_model(source_model) if source_model.is_file() else None  # jobs from before models were kept
    loaded = time.perf_counter()
    clustering = recluster(embeddings, job.k, seed=int(job.params.get("seed", 0)), labels=truth,
                           readout=None if base is None else base.readout,
                           beta=ClusterConfig.from_dict(source.params).imc.beta, calibration_space=space)
    clustered = time.perf_counter()
    if base is not None:
        try:
            predictor = reclustered_predictor(base, clustering)
        except InvalidInput as error:  # a read-out saved before read-outs could embed images
            log.warning("re-clustering %s keeps no model: %s", job.id, error)
        else:
            blobs.job_dir(settings, job.id).mkdir(parents=True, exist_ok=True)
            save_model(predictor, blobs.model_path(settings, job.id))
    modelled = time.perf_counter()
    monitor.on_progress(Progress(STAGE, 1, 1))  # raises if cancelled meanwhile
    monitor.stop()
    with transaction(sessions) as session:
        write_started = time.perf_counter()
        results.write_results(
            session,
            job_id=job.id,
            images=images,
            labels=clustering.labels.tolist(),
            confidences=clustering.confidences.tolist(),
            k=job.k,
        )
        written = time.perf_counter()
        timings = {
            "load": loaded - started,
            "cluster": clustered - loaded,
            "model": modelled - clustered,
            "write": written - write_started,
            "total": written - started,
        }
        done = jobs.finish_job(
            session,
            job_id=job.id,
            worker_id=worker_id,
            state=JobState.SUCCEEDED,
            n_clustered=len(images),
            metrics=clustering.metrics,
            device="cpu",
            timings={key: round(value, 4) for key, value in timings.items()},
            stage="done",
            epoch=1,
            epochs=1,
        )
        if not done:
            session.rollback()
            raise JobLost(str(job.id))
    log.info("re-clustering %s of %s at k=%d: %.2f s", job.id, source.id, job.k, timings["total"])
    return JobState.SUCCEEDED


def _rows(path: Path, n: int) -> np.ndarray:
    """The .npy array at `path`, which the source wrote with one row per clustered image."""
    array = np.load(path)
    if array.shape[0] != n:  # ours, not the user's: the files and the rows were written together
        raise RuntimeError(f"{path} has {array.shape[0]} rows for {n} assignments")
    return array

"""Files of a job under `<data_dir>/jobs/<job id>/`: the upload, its images, the checkpoint.

Names inside a job's folder are generated (never archive member names), so nothing a client
sends can choose where a file lands.
"""

from __future__ import annotations

import re
import shutil
import time
import uuid
from pathlib import Path

from store.settings import Settings

_BLOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def jobs_root(settings: Settings) -> Path:
    return settings.data_dir / "jobs"


def job_dir(settings: Settings, job_id: uuid.UUID) -> Path:
    return jobs_root(settings) / str(job_id)


def upload_path(settings: Settings, job_id: uuid.UUID) -> Path:
    """Where the raw archive is streamed to; removed once its images are extracted."""
    return job_dir(settings, job_id) / "upload.bin"


def images_dir(settings: Settings, job_id: uuid.UUID) -> Path:
    return job_dir(settings, job_id) / "images"


def image_path(settings: Settings, job_id: uuid.UUID, blob_name: str) -> Path:
    if not _BLOB_NAME.match(blob_name) or blob_name in (".", ".."):
        raise ValueError(f"invalid blob name {blob_name!r}")
    return images_dir(settings, job_id) / blob_name


def checkpoint_path(settings: Settings, job_id: uuid.UUID) -> Path:
    return job_dir(settings, job_id) / "checkpoint.pt"


def embeddings_path(settings: Settings, job_id: uuid.UUID) -> Path:
    """float32 (N, d) .npy; row i belongs to the i-th assignment in upload (`seq`) order."""
    return job_dir(settings, job_id) / "embeddings.npy"


def model_path(settings: Settings, job_id: uuid.UUID) -> Path:
    """The trained read-out (core.predict.save_model), for POST /jobs/{id}/predict."""
    return job_dir(settings, job_id) / "model.pt"


def thumbnails_dir(settings: Settings, job_id: uuid.UUID) -> Path:
    """Re-encoded, size-bounded previews made on demand by the web pages."""
    return job_dir(settings, job_id) / "thumbnails"


def new_job_dir(settings: Settings, job_id: uuid.UUID) -> Path:
    path = images_dir(settings, job_id)
    path.mkdir(parents=True, exist_ok=False)
    return job_dir(settings, job_id)


def delete_job_files(settings: Settings, job_id: uuid.UUID) -> None:
    shutil.rmtree(job_dir(settings, job_id), ignore_errors=True)


def job_ids_on_disk(settings: Settings, *, older_than_s: float = 0.0) -> list[uuid.UUID]:
    """Job folders last modified more than `older_than_s` ago (candidates for the orphan sweep)."""
    root = jobs_root(settings)
    if not root.is_dir():
        return []
    cutoff = time.time() - older_than_s
    found = []
    for entry in root.iterdir():
        try:
            job_id = uuid.UUID(entry.name)
        except ValueError:
            continue
        if entry.is_dir() and entry.stat().st_mtime <= cutoff:
            found.append(job_id)
    return found

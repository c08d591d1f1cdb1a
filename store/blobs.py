"""Files of a job under `<data_dir>/jobs/<job id>/`: the upload, its images, the checkpoint.

Names inside a job's folder are generated (never archive member names), so nothing a client
sends can choose where a file lands. An upload's images live in one pack file (`PACK_NAME`),
each at its row's `blob_offset`; older jobs have one file per image (offset None).
"""

from __future__ import annotations

import io
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import IO, BinaryIO, Protocol

from store.settings import Settings

_BLOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
PACK_NAME = "images.pack"  # every image of an upload, back to back, under images_dir


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


class StoredImage(Protocol):
    """Where an image's bytes are (an `images` row and `store.results.ImageFile` fit)."""

    @property
    def blob_name(self) -> str: ...
    @property
    def blob_offset(self) -> int | None: ...  # None: the blob is the image's own file
    @property
    def size_bytes(self) -> int: ...


def open_image(settings: Settings, job_id: uuid.UUID, image: StoredImage) -> BinaryIO:
    """A readable, seekable stream of one stored image's bytes (its own file or its pack slice)."""
    file = image_path(settings, job_id, image.blob_name).open("rb")
    if image.blob_offset is None:
        return file
    return io.BufferedReader(Slice(file, image.blob_offset, image.size_bytes))


def read_image(settings: Settings, job_id: uuid.UUID, image: StoredImage) -> bytes:
    with open_image(settings, job_id, image) as stream:
        return stream.read()


class Slice(io.RawIOBase):
    """`size` bytes of `file` from `offset`, as a file of their own (Pillow seeks and tells)."""

    def __init__(self, file: IO[bytes], offset: int, size: int) -> None:
        self._file, self._offset, self._size = file, offset, size
        self._at = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        want = min(len(buffer), self._size - self._at)
        if want <= 0:
            return 0
        self._file.seek(self._offset + self._at)
        data = self._file.read(want)
        buffer[: len(data)] = data
        self._at += len(data)
        return len(data)

    def readall(self) -> bytes:  # one read, not RawIOBase's 8 KiB loop
        self._file.seek(self._offset + self._at)
        data = self._file.read(max(0, self._size - self._at))
        self._at += len(data)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._at, io.SEEK_END: self._size}[whence]
        self._at = max(0, base + offset)
        return self._at

    def tell(self) -> int:
        return self._at

    def close(self) -> None:
        self._file.close()
        super().close()


def checkpoint_path(settings: Settings, job_id: uuid.UUID) -> Path:
    return job_dir(settings, job_id) / "checkpoint.pt"


def embeddings_path(settings: Settings, job_id: uuid.UUID) -> Path:
    """float32 (N, d) .npy; row i belongs to the i-th assignment in upload (`seq`) order."""
    return job_dir(settings, job_id) / "embeddings.npy"


def calibration_space_path(settings: Settings, job_id: uuid.UUID) -> Path:
    """float32 (N, <= 32) .npy, rows as embeddings.npy: where the run calibrated, if not its
    embeddings (ClusterResult.calibration_space); absent for methods that calibrate on those."""
    return job_dir(settings, job_id) / "calibration_space.npy"


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

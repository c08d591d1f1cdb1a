"""Result files streamed to clients: assignments as JSON Lines or Parquet, images as a zip.

Every function takes a session factory: responses stream after the request's session is gone.
"""

from __future__ import annotations

import io
import json
import re
import tempfile
import uuid
import zipfile
from collections.abc import Iterator
from itertools import islice
from typing import IO

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy.orm import Session, sessionmaker

from store import blobs, results
from store.settings import Settings

CHUNK = 256 * 1024
PARQUET_BATCH = 10_000
PARQUET_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("path", pa.string()),
        ("cluster", pa.int32()),
        ("confidence", pa.float64()),
    ]
)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def jsonl_lines(sessions: sessionmaker[Session], job_id: uuid.UUID) -> Iterator[str]:
    """One JSON object per line, upload order; paths are data here, never neutralised."""
    lines = []
    with sessions() as session:
        for row in results.iter_assignments(session, job_id=job_id):
            record = {
                "image_id": str(row.image_id),
                "path": row.path,
                "cluster": row.cluster,
                "confidence": row.confidence,
            }
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
            if len(lines) == 1000:
                yield "".join(lines)
                lines = []
    yield "".join(lines)


def parquet_file(sessions: sessionmaker[Session], job_id: uuid.UUID) -> IO[bytes]:
    """The whole table in a spooled temporary file, rewound (Parquet's footer comes last)."""
    sink = tempfile.SpooledTemporaryFile(max_size=32 * 1024**2)  # noqa: SIM115 - closed by stream
    with sessions() as session, pq.ParquetWriter(sink, PARQUET_SCHEMA) as writer:
        stream = results.iter_assignments(session, job_id=job_id)
        while rows := list(islice(stream, PARQUET_BATCH)):
            columns = {
                "image_id": [str(row.image_id) for row in rows],
                "path": [row.path for row in rows],
                "cluster": [row.cluster for row in rows],
                "confidence": [row.confidence for row in rows],
            }
            writer.write_table(pa.table(columns, schema=PARQUET_SCHEMA))
    sink.seek(0)
    return sink


def file_chunks(handle: IO[bytes]) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(CHUNK):
            yield chunk


def member_name(row: results.ImageFile) -> str:
    """`cluster-03/000042-red_img.png`: one flat, safe name per image (no '/', '..' or control
    characters from the archive survive); the upload position keeps names unique."""
    safe = _UNSAFE.sub("_", row.path).strip("._")[-120:] or "image"
    return f"cluster-{row.cluster:03d}/{row.seq:06d}-{safe}"


class _Pipe(io.RawIOBase):
    """Write-only, unseekable: zipfile then writes data descriptors and never seeks back."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


def zip_stream(
    sessions: sessionmaker[Session], settings: Settings, job_id: uuid.UUID, images_job_id: uuid.UUID
) -> Iterator[bytes]:
    """A zip with one folder per cluster holding the uploaded images, built while it streams.

    `images_job_id`: whose folder holds the images (a re-clustering's source)."""
    pipe = _Pipe()
    with sessions() as session, zipfile.ZipFile(pipe, "w", zipfile.ZIP_STORED) as archive:
        for row in results.iter_image_files(session, job_id=job_id):
            info = zipfile.ZipInfo(member_name(row))
            with blobs.open_image(settings, images_job_id, row) as src, archive.open(info, "w") as dest:
                while chunk := src.read(CHUNK):
                    dest.write(chunk)
            yield pipe.take()
    yield pipe.take()  # the central directory, written on close

"""Predictions for new images with a finished job's model, in a short-lived child process.

The API process never imports torch (pyproject's import contracts), so `python -m core.predict`
runs the model: it needs no result backend (the embedded broker has none), never waits behind
hours of training on a prefetch-1 worker queue, and a crash or a runaway prediction takes down
only the child, which is killed at the time limit. The price is start-up: importing torch takes
about two seconds on an idle machine, more under load, on every request.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from fastapi import UploadFile

from api.errors import ProblemError
from store.settings import Settings

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Prediction:
    filename: str
    cluster: int | None  # None when the file was skipped
    confidence: float | None
    skipped: str | None  # the reason


async def predict_uploads(
    model: Path, uploads: list[UploadFile], settings: Settings, slots: asyncio.Semaphore
) -> list[Prediction]:
    """Store the uploads under generated names, run the model on them, answer in upload order."""
    if not 1 <= len(uploads) <= settings.predict_max_images:
        raise ProblemError(
            422,
            "invalid_request",
            "Invalid request",
            f"send between 1 and {settings.predict_max_images} images, got {len(uploads)}",
        )
    with tempfile.TemporaryDirectory(prefix="corral-predict-") as folder:
        files = [await _store(upload, Path(folder), i, settings) for i, upload in enumerate(uploads)]
        async with slots:
            body = await _run(model, files, settings.predict_timeout_s)
    found = {Path(p["name"]).name: p for p in body["predictions"]}
    reasons = {Path(s["name"]).name: s["reason"] for s in body["skipped"]}
    out = []
    for upload, file in zip(uploads, files, strict=True):
        hit = found.get(file.name)
        out.append(
            Prediction(
                filename=upload.filename or file.name,
                cluster=None if hit is None else int(hit["cluster"]),
                confidence=None if hit is None else float(hit["confidence"]),
                skipped=None if hit else reasons.get(file.name, "unreadable_image"),
            )
        )
    return out


async def _store(upload: UploadFile, folder: Path, index: int, settings: Settings) -> Path:
    # A generated name; only a known image suffix is kept (anything else is skipped as not_an_image).
    suffix = PurePosixPath(upload.filename or "").suffix.lower()
    path = folder / f"{index:05d}{suffix if suffix in IMAGE_SUFFIXES else '.bin'}"
    written = 0
    with path.open("wb") as handle:
        while chunk := await upload.read(CHUNK):
            written += len(chunk)
            if written > settings.max_member_bytes:
                raise ProblemError(
                    413,
                    "image_too_large",
                    "Image too large",
                    f"{upload.filename!r} exceeds {settings.max_member_bytes} bytes",
                )
            handle.write(chunk)
    return path


async def _run(model: Path, files: list[Path], timeout_s: float) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "core.predict",
        str(model),
        *map(str, files),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError as error:
        process.kill()
        await process.wait()
        raise ProblemError(
            504,
            "prediction_timeout",
            "Prediction timed out",
            f"the model did not answer within {timeout_s:g} s; send fewer images",
        ) from error
    try:
        body: dict[str, Any] = json.loads(stdout)
    except ValueError:
        body = {}
    if process.returncode != 0 or "predictions" not in body:
        last_line = (stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        detail = str(body.get("error") or last_line)
        raise ProblemError(500, "prediction_failed", "Prediction failed", detail)
    return body

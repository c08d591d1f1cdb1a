"""Decode a folder, an archive or a list of files of images once into a uint8 tensor (N, C, S, S).

Order of results: inputs sorted by their relative path (POSIX separators, case-sensitive
code-point order), skipped files removed. Grey-scale sets stay 1-channel; a set with any colour
image becomes RGB. EXIF orientation is applied; animated formats give their first frame. Each
image is centre-cropped to a square and resized to the working size S (`auto_image_size`).
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from core.data.policy import ALLOWED_FORMATS, MAX_PIXELS, hidden_reason
from core.errors import InvalidInput

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})

Opener = Callable[[], bytes]


@dataclass
class ImageSet:
    images: torch.Tensor  # (N, C, S, S) uint8
    paths: list[str]  # relative path of each kept image, in result order
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    labels: np.ndarray | None = None  # (N,) class index when there is one top folder per class
    class_names: list[str] = field(default_factory=list)


KEPT_SIDES = (24, 32)  # px: a set whose median side is in this range keeps it as its working size


def auto_image_size(sides: Sequence[int]) -> int:
    """The working size for images of these sides (px), by their median side: 24-32 px keep it
    (MNIST stays 28 px, CIFAR 32), smaller ones go up to 32 (the small backbones pool four times
    and crop), 33-48 px down to 32, and anything larger to 64.

    Why not 32 for everything small: IMC-SwAV's encoder features of MNIST upsampled to 32 px
    were far weaker than at 28 px (k-means on them NMI 0.46-0.49 against 0.67-0.70), and a job
    without k chose k = 2-3 there against 10 at 28 px (bench/RESULTS.md, "Working size").
    """
    median = float(np.median(sides))
    if median > 48:
        return 64
    low, high = KEPT_SIDES
    return round(median) if low <= median <= high else 32


def read_images(path: str | Path, image_size: int | None = None) -> ImageSet:
    """Read a folder or a zip/tar(.gz) archive of images."""
    path = Path(path)
    if not path.exists():
        raise InvalidInput(f"{path} does not exist")
    if path.is_dir():
        return decode_sources(_folder_sources(path), image_size=image_size)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return decode_sources(_zip_sources(archive), image_size=image_size)
    if tarfile.is_tarfile(path):
        with tarfile.open(path) as archive:
            return decode_sources(_tar_sources(archive), image_size=image_size)
    raise InvalidInput(f"{path} is neither a folder nor a zip/tar archive")


def decode_files(
    files: Sequence[tuple[str, Path]], image_size: int | None = None, channels: int | None = None
) -> ImageSet:
    """Decode stored files; `files` pairs each display path with where its bytes are."""
    return decode_sources({name: file.read_bytes for name, file in files}, image_size=image_size,
                          channels=channels)


def decode_sources(
    sources: dict[str, Opener],
    image_size: int | None = None,
    max_pixels: int = MAX_PIXELS,
    channels: int | None = None,
) -> ImageSet:
    """Two passes: headers (size, mode) to fix S and C, then one full decode per image.

    channels: 1 or 3 forces grey-scale or RGB (a trained model's input); None decides by the set.
    """
    skipped: list[tuple[str, str]] = []
    headers: dict[str, tuple[int, int, str]] = {}
    for name in sorted(sources):
        if PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append((name, "not_an_image"))
            continue
        try:
            headers[name] = _header(sources[name](), max_pixels)
        except _Skip as skip:
            skipped.append((name, skip.reason))
    if not headers:
        return ImageSet(torch.zeros(0, 1, image_size or 32, image_size or 32, dtype=torch.uint8), [], skipped)
    size = image_size or auto_image_size([max(w, h) for w, h, _ in headers.values()])
    grey = all(mode in GREY_MODES for _, _, mode in headers.values()) if channels is None else channels == 1
    arrays, paths = [], []
    for name in headers:
        try:
            arrays.append(_decode(sources[name](), size, "L" if grey else "RGB"))
            paths.append(name)
        except _Skip as skip:
            skipped.append((name, skip.reason))
    images = torch.from_numpy(np.stack(arrays)) if arrays else torch.zeros(0, 1, size, size, dtype=torch.uint8)
    labels, class_names = folder_labels(paths)
    return ImageSet(images, paths, sorted(skipped), labels, class_names)


def top_folder(path: str) -> str | None:
    """The first component of a path with more than one (PurePosixPath's parts), else None."""
    parts = path.split("/")
    if "" in parts or "." in parts:  # a root, "//" or "./": only here do str.split and PurePosixPath differ
        parts = list(PurePosixPath(path).parts)
    return parts[0] if len(parts) > 1 else None


def folder_labels(paths: Sequence[str]) -> tuple[np.ndarray | None, list[str]]:
    """Class per image when every image sits under a top-level folder and there are >= 2 folders."""
    tops = [top_folder(p) for p in paths]
    if not tops or any(t is None for t in tops):
        return None, []
    names = sorted({t for t in tops if t is not None})
    if len(names) < 2:
        return None, []
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[t] for t in tops if t is not None], dtype=np.int64), names


class _Skip(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _open(data: bytes) -> Image.Image:
    if not data:
        raise _Skip("empty_file")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as error:
        raise _Skip("unreadable_image") from error
    except Exception as error:  # Pillow raises many types for hostile headers
        raise _Skip("unreadable_image") from error
    if image.format not in ALLOWED_FORMATS:
        raise _Skip("format_not_allowed")
    return image


def _header(data: bytes, max_pixels: int) -> tuple[int, int, str]:
    image = _open(data)
    width, height = image.size
    if width * height > max_pixels:
        raise _Skip("too_many_pixels")
    if width < 1 or height < 1:
        raise _Skip("unreadable_image")
    return width, height, image.mode


def _decode(data: bytes, size: int, mode: str) -> np.ndarray:
    """(C, S, S) uint8: EXIF-rotated, first frame, centre-cropped square, resized."""
    image = _open(data)
    try:
        image.seek(0)
        image = ImageOps.exif_transpose(image) or image
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            image = ImageOps.autocontrast(image.convert("F").convert("L"))
        image = image.convert("RGBA").convert(mode) if "A" in image.mode or image.mode == "P" else image.convert(mode)
        image = ImageOps.fit(image, (size, size), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
    except Exception as error:  # truncated or corrupt pixel data
        raise _Skip("corrupt_image") from error
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1).copy()


def _folder_sources(root: Path) -> dict[str, Opener]:
    return {
        file.relative_to(root).as_posix(): file.read_bytes
        for file in root.rglob("*")
        if file.is_file() and not file.is_symlink() and hidden_reason(file.relative_to(root).as_posix()) is None
    }


def _zip_sources(archive: zipfile.ZipFile) -> dict[str, Opener]:
    members = [m for m in archive.infolist() if not m.is_dir() and hidden_reason(m.filename) is None]
    return {m.filename: (lambda m=m: archive.read(m)) for m in members}


def _tar_sources(archive: tarfile.TarFile) -> dict[str, Opener]:
    members = [m for m in archive.getmembers() if m.isfile() and hidden_reason(m.name) is None]

    def reader(member: tarfile.TarInfo) -> Opener:
        def read() -> bytes:
            handle = archive.extractfile(member)
            return handle.read() if handle else b""

        return read

    return {m.name: reader(m) for m in members}


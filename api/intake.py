"""Upload intake: stream the upload to disk, then keep only the archive members that are images.

`save_upload` writes the request body to a file with a byte cap. `extract_images` detects the
archive by content, refuses bombs and oversized directories (`IntakeError`, a 4xx problem),
skips members that are not usable images (`SkippedEntry` with a reason slug), and appends each
accepted image to one pack file in `dest_dir` (the job's own, fresh folder; each image records
its offset). One file per upload rather than per image: creating 70,000 small files cost
0.04-0.6 ms each on this machine's disk, most of a big upload's time. It never writes outside
`dest_dir`, never uses a member's name as a file name, never replaces an existing file, keeps no
byte of a skipped member, and removes the pack when it raises.

Problem types are `https://corral.dev/problems/<slug>` (see `PROBLEMS` in `api.archives`).
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image

from api.archive_readers import Archive, open_archive
from api.archives import (
    PROBLEM_TYPE_BASE,
    IntakeError,
    IntakeLimits,
    Member,
    MemberError,
    MemberStream,
    archive_kind,
    check_declared,
    detect_format,
)
from store.blobs import PACK_NAME, Slice

__all__ = [
    "AcceptedImage",
    "IntakeError",
    "IntakeLimits",
    "IntakeResult",
    "SkippedEntry",
    "extract_images",
    "problem_body",
    "save_upload",
]

logger = logging.getLogger(__name__)

HEAD_BYTES = 4096  # enough to recognise any format by its magic, and for Pillow to read a header
MAX_PATH_CHARS = 4096
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")  # the only decoders we run
_JPEG_VARIANTS = ("MPO",)  # Pillow's JPEG opener returns these for multi-picture JPEGs
_IMAGE_MAGICS = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tif"),
    (b"MM\x00*", "tif"),
    (b"II+\x00", "tif"),  # BigTIFF
    (b"MM\x00+", "tif"),
)
_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
VERIFY_IN_MEMORY_BYTES = 8 << 20  # smaller members are decoded from the bytes just written
PACK_BUFFER = 1 << 20  # MNIST images are ~300 bytes: one write syscall per ~3,000 of them
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)


@dataclass(frozen=True, slots=True)  # slots: one per image, 70,000 of them for MNIST
class AcceptedImage:
    path: str  # member path inside the archive, normalised, display only
    blob_name: str  # generated file name under dest_dir (never derived from the member name)
    blob_offset: int  # where this image's bytes start in that file
    size_bytes: int
    width: int
    height: int
    format: str  # PIL format, e.g. "PNG"


@dataclass(frozen=True)
class SkippedEntry:
    path: str
    reason: str  # slug, e.g. "not_an_image", "too_many_pixels", "link", "unsafe_path"


@dataclass
class IntakeResult:
    archive_format: str  # "zip" | "tar" | "tar.gz" | "tar.bz2" | "tar.xz"
    images: list[AcceptedImage] = field(default_factory=list)
    skipped: list[SkippedEntry] = field(default_factory=list)
    entries: int = 0


def problem_body(error: IntakeError) -> dict[str, Any]:
    """The RFC 9457 body for `error`; its `extra` become extension members."""
    body: dict[str, Any] = dict(error.extra)
    body.update(
        type=PROBLEM_TYPE_BASE + error.type,
        title=error.title,
        status=error.status,
        detail=error.detail,
    )
    return body


async def save_upload(chunks: AsyncIterator[bytes], dest: Path, *, max_bytes: int) -> int:
    """Stream `chunks` into a new file `dest`; 413 (and no file) once past `max_bytes`."""
    written = 0
    out = dest.open("xb")  # never reuse or follow an existing path
    try:
        with out:
            async for chunk in chunks:
                written += len(chunk)
                if written > max_bytes:
                    raise IntakeError(
                        "archive-too-large",
                        f"The upload is larger than the {max_bytes:,}-byte limit.",
                        {"max_bytes": max_bytes},
                    )
                out.write(chunk)  # page-cache writes of small chunks: not worth a thread hop
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return written


def extract_images(archive: Path, dest_dir: Path, limits: IntakeLimits) -> IntakeResult:
    """Store the readable images of `archive` in `dest_dir`; see the module docstring."""
    kind = detect_format(archive)
    dest_dir.mkdir(parents=True, exist_ok=True)
    pack: _Pack | None = None
    try:
        reader = open_archive(archive, kind, limits)
        try:
            pack = _Pack(dest_dir / PACK_NAME)
            result = _take_members(reader, kind, pack, limits)
        finally:
            reader.close()
        _require_images(result)
        pack.finish()
    except BaseException as error:
        if pack is not None:
            pack.discard()
        if isinstance(error, IntakeError | MemoryError) or not isinstance(error, Exception):
            raise
        logger.warning("intake of %s failed unexpectedly", archive, exc_info=True)
        raise IntakeError("corrupt-archive", f"The {kind} archive cannot be read.") from error
    result.images.sort(key=lambda image: image.path)
    return result


def _take_members(reader: Archive, kind: str, pack: _Pack, limits: IntakeLimits) -> IntakeResult:
    result = IntakeResult(archive_format=kind, entries=reader.entries)
    seen: set[str] = set()
    for member in reader.members():
        if member.kind == "dir":
            continue
        path = _safe_path(member.name)
        try:
            check_declared(member, limits)  # a header that admits a bomb refuses the archive
            reason = _screen(member, path, seen, limits)
            if reason is not None:
                raise MemberError(reason)
            assert path is not None
            result.images.append(_take_image(reader, member, path, pack, limits))
        except MemberError as skip:
            shown = path or "".join(c if c.isprintable() else "?" for c in member.name[:256])
            result.skipped.append(SkippedEntry(shown, skip.reason))
    return result


def _screen(member: Member, path: str | None, seen: set[str], limits: IntakeLimits) -> str | None:
    """A skip reason from the member's metadata alone, or None to read it."""
    if member.kind == "link":
        return "link"
    if member.kind != "file":
        return "not_a_file"
    if path is None:
        return "unsafe_path"
    parts = path.split("/")
    if "__MACOSX" in parts or parts[-1].startswith("._") or parts[-1] == ".DS_Store":
        return "macos_metadata"
    if any(part.startswith(".") for part in parts):
        return "hidden"
    if path in seen:
        return "duplicate_path"
    seen.add(path)
    if member.encrypted:
        return "encrypted"
    if member.size == 0:
        return "empty_file"
    if member.size > limits.max_member_bytes:
        return "member_too_large"
    return None


def _safe_path(name: str) -> str | None:
    """`name` as a relative POSIX path, or None when it could point anywhere else."""
    if not name or len(name) > MAX_PATH_CHARS or _CONTROL.search(name):
        return None
    name = name.replace("\\", "/")
    if name.startswith("/") or _DRIVE.match(name):
        return None
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


def _take_image(
    reader: Archive, member: Member, path: str, pack: _Pack, limits: IntakeLimits
) -> AcceptedImage:
    with reader.open(member) as stream:
        head = stream.read(HEAD_BYTES)
        if _image_extension(head) is None:
            raise MemberError(_not_image_reason(head))
        start = pack.size
        try:
            data = pack.append(head, stream)
            size = pack.size - start
            with io.BytesIO(data) if data is not None else pack.view(start, size) as source:
                image_format, width, height = _check_image(source, limits)
        except MemberError:
            pack.cut(start)  # a skipped member leaves none of its bytes
            raise
    return AcceptedImage(path, pack.path.name, start, size, width, height, image_format)


def _image_extension(head: bytes) -> str | None:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return next((ext for magic, ext in _IMAGE_MAGICS if head.startswith(magic)), None)


def _not_image_reason(head: bytes) -> str:
    if not head:
        return "empty_file"
    if archive_kind(head) is not None:
        return "nested_archive"
    try:  # a header Pillow recognises is an image in a format we do not take
        with Image.open(io.BytesIO(head)) as image:
            allowed = (*ALLOWED_FORMATS, *_JPEG_VARIANTS)
            return "not_an_image" if image.format in allowed else "format_not_allowed"
    except Exception:
        return "not_an_image"


class _Pack:
    """The upload's one image file, created new (never an existing path or a link)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # O_EXCL: a clash raises here, so `discard` can only ever remove a file of ours
        fd = os.open(path, _OPEN_FLAGS, 0o600)
        self._out = os.fdopen(fd, "wb", buffering=PACK_BUFFER)
        self.size = 0

    def append(self, head: bytes, stream: MemberStream) -> bytes | None:
        """Copy one member to the end; its bytes when small, so the check need not read back."""
        kept = [head]
        self._out.write(head)
        while chunk := stream.read():
            self._out.write(chunk)
            if stream.done <= VERIFY_IN_MEMORY_BYTES:
                kept.append(chunk)
        self.size += stream.done
        return b"".join(kept) if stream.done <= VERIFY_IN_MEMORY_BYTES else None

    def view(self, start: int, size: int) -> BinaryIO:
        self._out.flush()
        return io.BufferedReader(Slice(self.path.open("rb"), start, size))

    def cut(self, start: int) -> None:
        self._out.seek(start)
        self._out.truncate()
        self.size = start

    def finish(self) -> None:
        """Flush and fsync once for the whole upload, before its rows are committed."""
        self._out.flush()
        os.fsync(self._out.fileno())
        self._out.close()

    def discard(self) -> None:
        self._out.close()
        self.path.unlink(missing_ok=True)


def _check_image(source: BinaryIO, limits: IntakeLimits) -> tuple[str, int, int]:
    """(format, width, height) once the header passes the pixel cap and the image decodes."""
    try:
        with Image.open(source, formats=ALLOWED_FORMATS) as image:
            width, height = image.size
            if width * height > limits.max_pixels:  # from the header: nothing decoded yet
                raise MemberError("too_many_pixels")
            image.load()
            return str(image.format), width, height
    except MemberError:
        raise
    except Image.DecompressionBombError as error:  # Pillow's own, looser guard
        raise MemberError("too_many_pixels") from error
    except (EOFError, OSError) as error:
        truncated = isinstance(error, EOFError) or "truncat" in str(error).lower()
        raise MemberError("truncated_image" if truncated else "unreadable_image") from error
    except Exception as error:  # decoders fail on hostile input in many ways
        raise MemberError("unreadable_image") from error


def _require_images(result: IntakeResult) -> None:
    if result.images:
        return
    reasons = Counter(entry.reason for entry in result.skipped)
    if result.entries == 0:
        detail = "The archive is empty."
    else:
        summary = ", ".join(f"{count} {reason}" for reason, count in reasons.most_common())
        detail = f"None of the {result.entries:,} entries is a readable image ({summary})."
    raise IntakeError(
        "no-images",
        detail,
        {
            "entries": result.entries,
            "images": 0,
            "skipped": len(result.skipped),
            "skipped_reasons": dict(reasons),
        },
    )

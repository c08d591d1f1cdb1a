"""Archives from strangers: format detection by content and member streams with hard caps.

Nothing here extracts by member name or trusts a size written in a header: members are read as
streams, and every byte a decompressor produces is counted against `IntakeLimits` (`Meter`).
The zip and tar readers themselves live in `api.zips` and `api.archive_readers`.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

PROBLEM_TYPE_BASE = "https://corral.dev/problems/"
CHUNK = 256 * 1024  # bytes asked of a decompressor at a time: bounds memory per read
RATIO_FLOOR = 1 << 20  # ratios count only past 1 MiB: a tiny blank image may compress 500x
MAX_SINGLE_READ = 4 << 20  # tarfile reads GNU long names and pax headers in one call

PROBLEMS: dict[str, tuple[int, str]] = {
    "archive-too-large": (413, "Upload too large"),
    "not-an-archive": (415, "Not a zip or tar archive"),
    "corrupt-archive": (422, "Corrupt archive"),
    "too-many-entries": (422, "Too many archive entries"),
    "zip-bomb": (422, "Archive expands beyond the limits"),
    "overlapping-entries": (422, "Overlapping archive entries"),
    "no-images": (422, "No readable images"),
}

_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
COMPRESSORS: dict[str, tuple[bytes, Any]] = {
    "tar.gz": (b"\x1f\x8b", gzip.open),
    "tar.bz2": (b"BZh", bz2.open),
    "tar.xz": (b"\xfd7zXZ\x00", lzma.open),
}
_OTHER_ARCHIVE_MAGICS = (b"7z\xbc\xaf\x27\x1c", b"Rar!\x1a\x07", b"\x28\xb5\x2f\xfd")
READ_ERRORS = (
    OSError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    zipfile.BadZipFile,
    tarfile.TarError,
    NotImplementedError,
    ValueError,
    struct.error,
)


@dataclass(frozen=True)
class IntakeLimits:
    max_upload_bytes: int = 2 << 30
    max_entries: int = 100_000  # refused from the directory, before anything is written
    max_member_bytes: int = 256 << 20  # bytes actually decompressed per member
    max_total_bytes: int = 4 << 30  # bytes actually decompressed in total
    max_ratio: float = 200.0  # decompressed / compressed, per zip member, whole stream for tar
    max_pixels: int = 50_000_000  # per image, read from the header before decoding


class IntakeError(Exception):
    """A refused upload: `status`, `type` (slug), `title` and `detail` make its problem body."""

    def __init__(self, type: str, detail: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.status, self.title = PROBLEMS[type]
        self.type = type
        self.detail = detail
        self.extra: dict[str, Any] = dict(extra or {})


class MemberError(Exception):
    """One member is skipped (unreadable, unsafe, not an image); `reason` is the skip slug."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Member:
    index: int  # position in the archive; blob names come from this, never from `name`
    name: str  # as stored: untrusted
    kind: str  # "file" | "dir" | "link" | "other"
    size: int  # uncompressed size the header declares (a zip header may lie)
    packed: int | None  # compressed size for a zip member; None inside a tar stream
    encrypted: bool = False


def archive_kind(head: bytes) -> str | None:
    """Name of the archive format `head` starts with, or None."""
    if head.startswith(_ZIP_MAGICS):
        return "zip"
    if is_tar_header(head[:512]):
        return "tar"
    for name, (magic, _) in COMPRESSORS.items():
        if head.startswith(magic):
            return name
    return "other" if head.startswith(_OTHER_ARCHIVE_MAGICS) else None


def is_tar_header(block: bytes) -> bool:
    """True for a ustar header block or a pre-POSIX one with a valid checksum."""
    if len(block) != 512 or not block.strip(b"\0"):
        return False
    if block[257:262] == b"ustar":
        return True
    try:
        stored = int(block[148:156].strip(b" \0") or b"x", 8)
    except ValueError:
        return False
    return stored == sum(block[:148]) + 8 * ord(" ") + sum(block[156:])


def detect_format(path: Path) -> str:
    """ "zip", "tar", "tar.gz", "tar.bz2" or "tar.xz", from the bytes; else IntakeError 415."""
    with path.open("rb") as f:
        head = f.read(512)
    kind = archive_kind(head) or ("tar" if _is_empty_tar(head) else None)
    if kind in COMPRESSORS:
        inner = _decompressed_head(path, kind)
        kind = kind if is_tar_header(inner) or _is_empty_tar(inner) else None
    if kind not in ("zip", "tar", *COMPRESSORS):
        raise IntakeError(
            "not-an-archive",
            "The upload is not a zip, tar, tar.gz, tar.bz2 or tar.xz archive "
            "(formats are recognised by their content, not by name or Content-Type).",
        )
    assert kind is not None
    return kind


def _is_empty_tar(head: bytes) -> bool:
    return len(head) == 512 and not head.strip(b"\0")  # an empty tar is only zero blocks


def _decompressed_head(path: Path, kind: str) -> bytes:
    try:
        with COMPRESSORS[kind][1](path) as stream:
            return stream.read(512)
    except READ_ERRORS as error:
        raise IntakeError("corrupt-archive", f"The {kind} stream cannot be read: {error}.") from error


class Meter:
    """Counts bytes as decompressors produce them; raises zip-bomb the moment a cap is passed."""

    def __init__(self, limits: IntakeLimits) -> None:
        self.limits = limits
        self.total = 0

    def count(self, member: Member, done: int, new: int) -> None:
        """Account `new` bytes, after which `member` has produced `done` bytes."""
        self.total += new
        lim = self.limits
        if done > member.size:
            raise bomb(f"Member {member.name!r} declares {member.size:,} bytes but expands to more.")
        if done > lim.max_member_bytes:
            raise bomb(f"Member {member.name!r} expands past {lim.max_member_bytes:,} bytes.")
        if self.total > lim.max_total_bytes:
            raise bomb(f"The archive expands past {lim.max_total_bytes:,} bytes in total.")
        if member.packed is not None and done > max(RATIO_FLOOR, lim.max_ratio * member.packed):
            raise bomb(f"Member {member.name!r} expands more than {lim.max_ratio:,.0f} times.")


def check_declared(member: Member, limits: IntakeLimits) -> None:
    """Refuse a zip member whose own header already admits a bomb-like ratio."""
    if member.packed is not None and member.size > RATIO_FLOOR:
        ratio = member.size / max(member.packed, 1)
        if ratio > limits.max_ratio:
            raise bomb(
                f"Member {member.name!r} declares a compression ratio of "
                f"{ratio:,.0f}; the limit is {limits.max_ratio:,.0f}."
            )


def bomb(detail: str) -> IntakeError:
    return IntakeError("zip-bomb", detail)


class MemberStream:
    """One member's bytes, counted by the meter; read errors become skips or refusals."""

    def __init__(self, raw: IO[bytes], member: Member, meter: Meter, errors_fatal: bool) -> None:
        self._raw, self._member, self._meter = raw, member, meter
        self._errors_fatal = errors_fatal
        self.done = 0

    def read(self, n: int = CHUNK) -> bytes:
        try:
            data = self._raw.read(n)
        except READ_ERRORS as error:
            if self._errors_fatal:
                raise IntakeError("corrupt-archive", f"The archive is corrupt: {error}.") from error
            raise MemberError("corrupt_member") from error
        self.done += len(data)
        self._meter.count(self._member, self.done, len(data))
        if not data and n and self.done != self._member.size:
            raise MemberError("corrupt_member")  # shorter than its header says
        return data

    def __enter__(self) -> MemberStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._raw.close()


def refuse_entries(entries: int, limits: IntakeLimits) -> None:
    if entries > limits.max_entries:
        raise IntakeError(
            "too-many-entries",
            f"The archive has {entries:,} entries; the limit is {limits.max_entries:,}.",
            {"entries": entries, "max_entries": limits.max_entries},
        )

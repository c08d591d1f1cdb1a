"""Zip and tar readers: entry counts and overlaps refused up front, members read as capped streams.

The zip reader lives in `api.zips`. Tar streams are listed once to count entries, then read in
order; a compressed tar is capped as a whole stream.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from api.archives import (
    COMPRESSORS,
    MAX_SINGLE_READ,
    RATIO_FLOOR,
    READ_ERRORS,
    IntakeError,
    IntakeLimits,
    Member,
    MemberError,
    MemberStream,
    Meter,
    bomb,
    refuse_entries,
)
from api.zips import ZipArchive


class TarArchive:
    """A tar, plain or compressed, listed once (counting entries) and then read in order."""

    def __init__(self, path: Path, kind: str, meter: Meter) -> None:
        self._meter = meter
        self._file = path.open("rb")
        try:
            self._stream = _tar_stream(self._file, kind, meter)
            self._tar = tarfile.TarFile(fileobj=self._stream, mode="r")
            self._infos = _list_tar(self._tar, meter.limits)
        except BaseException:
            self._file.close()
            raise
        self.entries = len(self._infos)

    def members(self) -> Iterator[Member]:
        for index, info in enumerate(self._infos):
            yield Member(index, info.name, _tar_kind(info), info.size, None)

    def open(self, member: Member) -> MemberStream:
        raw = self._tar.extractfile(self._infos[member.index])
        if raw is None:
            raise MemberError("not_a_file")
        return MemberStream(raw, member, self._meter, errors_fatal=True)

    def close(self) -> None:
        self._tar.close()  # leaves a fileobj it was given open
        self._stream.close()
        self._file.close()


def _list_tar(tar: tarfile.TarFile, limits: IntakeLimits) -> list[tarfile.TarInfo]:
    infos: list[tarfile.TarInfo] = []
    while (info := tar.next()) is not None:
        infos.append(info)
        refuse_entries(len(infos), limits)
    return infos


def _tar_kind(info: tarfile.TarInfo) -> str:
    if info.isdir():
        return "dir"
    if info.issym() or info.islnk():
        return "link"
    return "file" if info.isreg() else "other"


def _tar_stream(file: IO[bytes], kind: str, meter: Meter) -> _CappedStream:
    if kind == "tar":
        return _CappedStream(file, limit=None)
    # The whole decompressed stream (headers, skipped members, both passes' reads) stays under
    # the total cap plus header room, and under the ratio cap against the compressed size.
    lim = meter.limits
    packed = file.seek(0, 2)
    file.seek(0)
    headers = 3 * 512 * lim.max_entries
    limit = min(lim.max_total_bytes, max(RATIO_FLOOR, int(lim.max_ratio * packed))) + headers
    return _CappedStream(COMPRESSORS[kind][1](file), limit)


class _CappedStream:
    """A seekable view of a (decompressed) tar stream that refuses to run past `limit` bytes."""

    def __init__(self, raw: IO[bytes], limit: int | None) -> None:
        self._raw, self._limit = raw, limit

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > MAX_SINGLE_READ:
            raise IntakeError("corrupt-archive", f"A tar header asks for {n:,} bytes at once.")
        data = self._raw.read(n)
        self._check(self._raw.tell())
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        target = offset + (self._raw.tell() if whence == 1 else 0)
        if whence == 2:
            raise OSError("tar streams are not seeked from the end")
        self._check(target)
        return self._raw.seek(target)

    def tell(self) -> int:
        return self._raw.tell()

    def write(self, data: bytes) -> int:
        raise OSError("archives are read-only here")

    def close(self) -> None:
        self._raw.close()

    def _check(self, position: int) -> None:
        if self._limit is not None and position > self._limit:
            raise bomb(f"The compressed tar expands past {self._limit:,} bytes.")


Archive = ZipArchive | TarArchive


def open_archive(path: Path, kind: str, limits: IntakeLimits) -> Archive:
    """Open a detected archive; the entry count is checked here, before any member is read."""
    meter = Meter(limits)
    try:
        if kind == "zip":
            return ZipArchive(path, meter)
        return TarArchive(path, kind, meter)
    except (IntakeError, MemberError):
        raise
    except READ_ERRORS as error:
        detail = f"The {kind} archive cannot be read: {error}."
        raise IntakeError("corrupt-archive", detail) from error

"""Zip and tar readers: entry counts and overlaps refused up front, members read as capped streams.

Zip directories are walked by hand before `zipfile` builds its index, so a lying entry count or
a huge central directory is refused cheaply, and members that share bytes (the "better zip
bomb", Fifield 2019) are refused before any member is read. Tar streams are listed once to count
entries, then read in order; a compressed tar is capped as a whole stream.
"""

from __future__ import annotations

import copy
import stat
import struct
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from api.archives import (
    COMPRESSORS,
    MAX_SINGLE_READ,
    RATIO_FLOOR,
    READ_ERRORS,
    IntakeLimits,
    Member,
    MemberError,
    MemberStream,
    Meter,
    bomb,
    refuse_entries,
    refused,
)
from api.errors import ProblemError

# Zip records (APPNOTE 4.3): only the fields we need are named, the rest skipped with "x".
_EOCD = struct.Struct("<4s4H2LH")  # sig, disks, entries here, entries, cd size, cd offset, comment
_ZIP64_LOCATOR = struct.Struct("<4sLQL")  # sig, disk, zip64 EOCD offset, disks
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")  # sig, size, versions, disks, entries x2, cd size, offset
_CD_ENTRY = struct.Struct("<4s24x3H12x")  # sig, ..., name/extra/comment lengths, ...
_LOCAL_HEADER_SIZE = 30


class ZipArchive:
    """A zip whose directory was counted and checked for overlaps before anything is read."""

    def __init__(self, path: Path, meter: Meter) -> None:
        self._meter = meter
        self._file = path.open("rb")
        try:
            cd_start, cd_end, declared = _zip_directory(self._file, path.stat().st_size)
            limits = meter.limits
            refuse_entries(
                max(declared, _count_zip_entries(self._file, cd_start, cd_end, limits.max_entries)),
                limits,
            )
            self._zip = zipfile.ZipFile(self._file)
            self._infos = self._zip.infolist()
            refuse_entries(len(self._infos), limits)
            _refuse_overlaps(self._infos, cd_start)
        except BaseException:
            self._file.close()
            raise
        self.entries = len(self._infos)

    def members(self) -> Iterator[Member]:
        for index, info in enumerate(self._infos):
            yield Member(
                index,
                info.filename,
                _zip_kind(info),
                info.file_size,
                info.compress_size,
                encrypted=bool(info.flag_bits & 0x1),
            )

    def open(self, member: Member) -> MemberStream:
        # Let the stream run one byte past our own cap rather than stop at the size the header
        # claims: a header that lies small is then caught by the meter instead of read as a CRC
        # error.
        info = copy.copy(self._infos[member.index])
        info.file_size = self._meter.limits.max_member_bytes + 1
        try:
            raw = self._zip.open(info)
        except NotImplementedError as error:
            raise MemberError("unsupported_compression") from error
        except READ_ERRORS as error:
            raise MemberError("corrupt_member") from error
        return MemberStream(raw, member, self._meter, errors_fatal=False)

    def close(self) -> None:
        self._zip.close()
        self._file.close()


def _zip_kind(info: zipfile.ZipInfo) -> str:
    mode = info.external_attr >> 16
    if info.is_dir() or stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "link"
    return "file" if stat.S_IFMT(mode) in (0, stat.S_IFREG) else "other"


def _zip_directory(f: IO[bytes], size: int) -> tuple[int, int, int]:
    """(central directory start, end, declared entry count) from the end records."""
    tail_start = max(0, size - _EOCD.size - 0xFFFF)  # the EOCD plus the longest comment
    f.seek(tail_start)
    tail = f.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _EOCD.size:
        raise refused("corrupt_archive", "The zip has no end-of-central-directory record.")
    *_, declared, cd_size, _, _ = _EOCD.unpack_from(tail, at)
    cd_end = tail_start + at
    if at >= _ZIP64_LOCATOR.size and tail[at - 20 : at - 16] == b"PK\x06\x07":
        _, _, cd_end, _ = _ZIP64_LOCATOR.unpack_from(tail, at - 20)
        f.seek(cd_end)
        record = f.read(_ZIP64_EOCD.size)
        if len(record) < _ZIP64_EOCD.size or record[:4] != b"PK\x06\x06":
            raise refused("corrupt_archive", "The zip64 end record is missing or damaged.")
        *_, declared, cd_size, _ = _ZIP64_EOCD.unpack(record)
    if cd_size > cd_end:
        raise refused("corrupt_archive", "The zip central directory lies outside the file.")
    return cd_end - cd_size, cd_end, declared


def _count_zip_entries(f: IO[bytes], cd_start: int, cd_end: int, limit: int) -> int:
    """Walk directory records without building ZipInfo objects; stop once past `limit`."""
    f.seek(cd_start)
    count, at = 0, cd_start
    while at + _CD_ENTRY.size <= cd_end and count <= limit:
        record = f.read(_CD_ENTRY.size)
        signature, *lengths = _CD_ENTRY.unpack(record)
        if signature != b"PK\x01\x02":
            break
        f.seek(sum(lengths), 1)
        at += _CD_ENTRY.size + sum(lengths)
        count += 1
    return count


def _refuse_overlaps(infos: list[zipfile.ZipInfo], cd_start: int) -> None:
    """Each member's header and data must end before the next member (or the directory) starts."""
    spans = sorted((i.header_offset, _zip_data_end(i)) for i in infos)
    for (start, end), (next_start, _) in zip(spans, [*spans[1:], (cd_start, 0)], strict=False):
        if end > next_start:
            raise refused(
                "overlapping_entries",
                f"Zip entries overlap (one at byte {start:,} runs past {next_start:,}); "
                "members that share data are a known decompression bomb.",
                offset=start,
            )


def _zip_data_end(info: zipfile.ZipInfo) -> int:
    # A lower bound: the local extra field and data descriptor only push the real end further.
    encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
    try:
        name_length = len(info.orig_filename.encode(encoding))
    except UnicodeEncodeError:
        name_length = len(info.orig_filename.encode("utf-8"))
    return info.header_offset + _LOCAL_HEADER_SIZE + name_length + info.compress_size


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
            raise refused("corrupt_archive", f"A tar header asks for {n:,} bytes at once.")
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
    except (ProblemError, MemberError):
        raise
    except READ_ERRORS as error:
        detail = f"The {kind} archive cannot be read: {error}."
        raise refused("corrupt_archive", detail) from error

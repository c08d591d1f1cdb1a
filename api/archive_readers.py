"""Zip and tar readers: entry counts and overlaps refused up front, members read as capped streams.

Zip directories are walked by hand before `zipfile` builds its index, so a lying entry count or
a huge central directory is refused cheaply, and members that share bytes (the "better zip
bomb", Fifield 2019) are refused before any member is read. Tar streams are listed once to count
entries, then read in order; a compressed tar is capped as a whole stream.
"""

from __future__ import annotations

import array
import stat
import struct
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, cast

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

# Zip records (APPNOTE 4.3): only the fields we need are named, the rest skipped with "x".
_EOCD = struct.Struct("<4s4H2LH")  # sig, disks, entries here, entries, cd size, cd offset, comment
_ZIP64_LOCATOR = struct.Struct("<4sLQL")  # sig, disk, zip64 EOCD offset, disks
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")  # sig, size, versions, disks, entries x2, cd size, offset
_CD_ENTRY = struct.Struct("<4s24x3H12x")  # sig, ..., name/extra/comment lengths, ...
# sig, made by (version, system), needs (version, reserved), flags, method, time, date, crc, sizes
# (packed, plain), name/extra/comment lengths, disk, internal/external attributes, header offset
_CD_RECORD = struct.Struct("<4s4B4H3L5H2L")
_LOCAL_HEADER = struct.Struct("<4s2x2H16x2H")  # sig, ..., flags, method, ..., name/extra lengths
_ZIP64_EXTRA = 0x0001
_UTF8_NAME = 0x800
_UNSUPPORTED_FLAGS = {0x1: "encryption", 0x20: "compressed patched data", 0x40: "strong encryption"}


class ZipArchive:
    """A zip read straight from its central directory, one record at a time.

    `zipfile.ZipFile` holds a ZipInfo per entry from the start (43 MB for MNIST's 70,000): here
    the directory is walked three times instead (count, overlaps, members), each record dropped
    once read, and only the member being read has a ZipInfo. Member data is decompressed and
    CRC-checked by `zipfile.ZipExtFile`, the class `ZipFile.open` returns.
    """

    def __init__(self, path: Path, meter: Meter) -> None:
        self._meter = meter
        self._file = path.open("rb")  # the directory walk
        self._data = path.open("rb")  # member data; the walk's position stays where it is
        try:
            self._cd_start, self._cd_end, declared, self._concat = _zip_directory(
                self._file, path.stat().st_size
            )
            limits = meter.limits
            counted = _count_zip_entries(self._file, self._cd_start, self._cd_end, limits.max_entries)
            refuse_entries(max(declared, counted), limits)
            self.entries = _refuse_overlaps(self._records(), self._cd_start)
            refuse_entries(self.entries, limits)
        except BaseException:
            self.close()
            raise
        self._current: tuple[int, zipfile.ZipInfo] | None = None

    def members(self) -> Iterator[Member]:
        for index, (info, _) in enumerate(self._records()):
            self._current = (index, info)
            yield Member(
                index,
                info.filename,
                _zip_kind(info),
                info.file_size,
                info.compress_size,
                encrypted=bool(info.flag_bits & 0x1),
            )

    def open(self, member: Member) -> MemberStream:
        assert self._current is not None and self._current[0] == member.index, "open in order"
        info = self._current[1]
        # Let the stream run one byte past our own cap rather than stop at the size the header
        # claims: a header that lies small is then caught by the meter instead of read as a CRC
        # error.
        info.file_size = self._meter.limits.max_member_bytes + 1
        try:
            raw = _open_member(self._data, info)
        except NotImplementedError as error:
            raise MemberError("unsupported_compression") from error
        except READ_ERRORS as error:
            raise MemberError("corrupt_member") from error
        return MemberStream(raw, member, self._meter, errors_fatal=False)

    def close(self) -> None:
        self._file.close()
        self._data.close()

    def _records(self) -> Iterator[tuple[zipfile.ZipInfo, int]]:
        return _zip_records(self._file, self._cd_start, self._cd_end, self._concat)


def _zip_kind(info: zipfile.ZipInfo) -> str:
    mode = info.external_attr >> 16
    if info.is_dir() or stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "link"
    return "file" if stat.S_IFMT(mode) in (0, stat.S_IFREG) else "other"


def _zip_directory(f: IO[bytes], size: int) -> tuple[int, int, int, int]:
    """(central directory start, end, declared entry count, bytes before the zip) from the end."""
    tail_start = max(0, size - _EOCD.size - 0xFFFF)  # the EOCD plus the longest comment
    f.seek(tail_start)
    tail = f.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _EOCD.size:
        raise IntakeError("corrupt-archive", "The zip has no end-of-central-directory record.")
    *_, declared, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, at)
    cd_end = tail_start + at
    if at >= _ZIP64_LOCATOR.size and tail[at - 20 : at - 16] == b"PK\x06\x07":
        _, _, cd_end, _ = _ZIP64_LOCATOR.unpack_from(tail, at - 20)
        f.seek(cd_end)
        record = f.read(_ZIP64_EOCD.size)
        if len(record) < _ZIP64_EOCD.size or record[:4] != b"PK\x06\x06":
            raise IntakeError("corrupt-archive", "The zip64 end record is missing or damaged.")
        *_, declared, cd_size, cd_offset = _ZIP64_EOCD.unpack(record)
    if cd_size > cd_end:
        raise IntakeError("corrupt-archive", "The zip central directory lies outside the file.")
    # As zipfile: offsets are relative to where the zip starts (a self-extractor's stub first).
    concat = cd_end - cd_size - cd_offset
    if concat < 0:
        raise zipfile.BadZipFile("Bad offset for central directory")
    return cd_end - cd_size, cd_end, declared, concat


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


def _zip_records(
    f: IO[bytes], cd_start: int, cd_end: int, concat: int
) -> Iterator[tuple[zipfile.ZipInfo, int]]:
    """Each directory record as zipfile would read it, with its stored name's length in bytes."""
    f.seek(cd_start)
    at = cd_start
    while at < cd_end:
        record = f.read(_CD_RECORD.size)
        if len(record) != _CD_RECORD.size:
            raise zipfile.BadZipFile("Truncated central directory")
        (signature, create_version, create_system, extract_version, reserved, flags, method, time,
         date, crc, packed, size, name_length, extra_length, comment_length, _, internal, external,
         offset) = _CD_RECORD.unpack(record)
        if signature != b"PK\x01\x02":
            raise zipfile.BadZipFile("Bad magic number for central directory")
        if extract_version > zipfile.MAX_EXTRACT_VERSION:
            raise NotImplementedError(f"zip file version {extract_version / 10:.1f}")
        name = f.read(name_length).decode("utf-8" if flags & _UTF8_NAME else "cp437")
        info = zipfile.ZipInfo(name)
        info.extra = f.read(extra_length)
        f.seek(comment_length, 1)
        info.create_version, info.create_system = create_version, create_system
        info.extract_version, info.reserved = extract_version, reserved
        info.flag_bits, info.compress_type = flags, method
        info.CRC, info.compress_size, info.file_size = crc, packed, size
        info.header_offset, info.internal_attr, info.external_attr = offset, internal, external
        info.date_time = ((date >> 9) + 1980, (date >> 5) & 0xF, date & 0x1F,
                          time >> 11, (time >> 5) & 0x3F, (time & 0x1F) * 2)
        _apply_zip64(info)
        info.header_offset += concat
        at += _CD_RECORD.size + name_length + extra_length + comment_length
        yield info, name_length


def _apply_zip64(info: zipfile.ZipInfo) -> None:
    """Sizes and offset that overflowed 32 bits come from the zip64 extra field (APPNOTE 4.5.3)."""
    extra = info.extra
    while len(extra) >= 4:
        kind, length = struct.unpack("<HH", extra[:4])
        if length + 4 > len(extra):
            raise zipfile.BadZipFile(f"Corrupt extra field {kind:04x} (size={length})")
        if kind == _ZIP64_EXTRA:
            values = iter(struct.unpack(f"<{length // 8}Q", extra[4 : 4 + length // 8 * 8]))
            try:
                if info.file_size in (0xFFFF_FFFF_FFFF_FFFF, 0xFFFF_FFFF):
                    info.file_size = next(values)
                if info.compress_size == 0xFFFF_FFFF:
                    info.compress_size = next(values)
                if info.header_offset == 0xFFFF_FFFF:
                    info.header_offset = next(values)
            except StopIteration:
                raise zipfile.BadZipFile("Corrupt zip64 extra field") from None
        extra = extra[length + 4 :]


def _refuse_overlaps(records: Iterator[tuple[zipfile.ZipInfo, int]], cd_start: int) -> int:
    """Each member's header and data must end before the next member (or the directory) starts.

    Returns the number of entries. Spans are kept as two arrays of integers (16 bytes an entry).
    """
    starts, ends = array.array("Q"), array.array("Q")
    for info, name_length in records:
        starts.append(info.header_offset)
        # A lower bound: the local extra field and data descriptor only push the real end further.
        ends.append(info.header_offset + _LOCAL_HEADER.size + name_length + info.compress_size)
    order = sorted(range(len(starts)), key=starts.__getitem__)
    for position, here in enumerate(order):
        next_start = starts[order[position + 1]] if position + 1 < len(order) else cd_start
        if ends[here] > next_start:
            raise IntakeError(
                "overlapping-entries",
                f"Zip entries overlap (one at byte {starts[here]:,} runs past {next_start:,}); "
                "members that share data are a known decompression bomb.",
                {"offset": starts[here]},
            )
    return len(starts)


def _open_member(f: IO[bytes], info: zipfile.ZipInfo) -> IO[bytes]:
    """The checks `ZipFile.open` makes on the local header, then a stream of the member's bytes."""
    f.seek(info.header_offset)
    header = f.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size:
        raise zipfile.BadZipFile("Truncated file header")
    signature, flags, _, name_length, extra_length = _LOCAL_HEADER.unpack(header)
    if signature != b"PK\x03\x04":
        raise zipfile.BadZipFile("Bad magic number for file header")
    name = f.read(name_length).decode("utf-8" if flags & _UTF8_NAME else "cp437")
    f.seek(extra_length, 1)
    for flag, what in _UNSUPPORTED_FLAGS.items():
        if info.flag_bits & flag:
            raise NotImplementedError(what)
    if name != info.orig_filename:
        raise zipfile.BadZipFile(f"File name in directory {info.orig_filename!r} and header {name!r} differ.")
    return cast(IO[bytes], zipfile.ZipExtFile(f, "r", info))


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

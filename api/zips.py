"""The zip reader: straight from the central directory, one record at a time.

The directory is walked by hand, so a lying entry count or a huge directory is refused cheaply,
and members that share bytes (the "better zip bomb", Fifield 2019) are refused before any member
is read. `zipfile.ZipFile` would hold a ZipInfo per entry from the start (43 MB for MNIST's
70,000 images); here the directory is walked three times (count, overlaps, members), each record
dropped once read. Small stored or deflated members (most images) are read and decompressed in
one call and CRC-checked at their end; others go through `zipfile.ZipExtFile`, the stream
`ZipFile.open` returns. Either way every byte produced is counted by the `Meter`.
"""

from __future__ import annotations

import array
import io
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, NamedTuple, cast

from api.archives import READ_ERRORS, IntakeError, Member, MemberError, MemberStream, Meter, refuse_entries

# Zip records (APPNOTE 4.3): only the fields we need are named, the rest skipped with "x".
_EOCD = struct.Struct("<4s4H2LH")  # sig, disks, entries here, entries, cd size, cd offset, comment
_ZIP64_LOCATOR = struct.Struct("<4sLQL")  # sig, disk, zip64 EOCD offset, disks
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")  # sig, size, versions, disks, entries x2, cd size, offset
_CD_ENTRY = struct.Struct("<4s24x3H12x")  # sig, ..., name/extra/comment lengths, ...
# sig, needs (version), flags, method, crc, sizes (packed, plain), name/extra/comment lengths,
# external attributes, local header offset
_CD_RECORD = struct.Struct("<4s2xB1x2H4xLLL3H4xLL")
_LOCAL_HEADER = struct.Struct("<4s2x2H16x2H")  # sig, ..., flags, method, ..., name/extra lengths
_ZIP64_EXTRA = 0x0001
_UTF8_NAME = 0x800
_UNSUPPORTED_FLAGS = {0x1: "encryption", 0x20: "compressed patched data", 0x40: "strong encryption"}
# Read in one call below this (packed and declared size); MNIST's images are ~300 bytes.
SMALL_MEMBER_BYTES = 1 << 20


class Record(NamedTuple):
    """One central directory entry, as zipfile would read it."""

    name: str  # zipfile's ZipInfo.filename: cut at a NUL
    stored_name: str  # as stored; the local header must carry the same
    name_length: int  # the stored name's bytes
    flags: int
    method: int
    crc: int
    packed: int
    size: int  # declared
    offset: int  # of the local header, from the zip's start
    external: int


class ZipArchive:
    """A zip whose directory was counted and checked for overlaps before anything is read."""

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
        self._current: tuple[int, Record] | None = None

    def members(self) -> Iterator[Member]:
        for index, record in enumerate(self._records()):
            self._current = (index, record)
            encrypted = bool(record.flags & 0x1)
            yield Member(index, record.name, _zip_kind(record), record.size, record.packed, encrypted)

    def open(self, member: Member) -> MemberStream:
        assert self._current is not None and self._current[0] == member.index, "open in order"
        try:
            raw = _open_member(self._data, self._current[1], self._meter.limits.max_member_bytes)
        except NotImplementedError as error:
            raise MemberError("unsupported_compression") from error
        except READ_ERRORS as error:
            raise MemberError("corrupt_member") from error
        return MemberStream(raw, member, self._meter, errors_fatal=False)

    def close(self) -> None:
        self._file.close()
        self._data.close()

    def _records(self) -> Iterator[Record]:
        return _zip_records(self._file, self._cd_start, self._cd_end, self._concat)


def _zip_kind(record: Record) -> str:
    mode = record.external >> 16
    if record.name.endswith("/") or stat.S_ISDIR(mode):
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
    # As zipfile: offsets count from where the zip starts (after a self-extractor's stub).
    concat = cd_end - cd_size - cd_offset
    if concat < 0:
        raise zipfile.BadZipFile("Bad offset for central directory")
    return cd_end - cd_size, cd_end, declared, concat


def _count_zip_entries(f: IO[bytes], cd_start: int, cd_end: int, limit: int) -> int:
    """Walk directory records without decoding them; stop once past `limit`."""
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


def _zip_records(f: IO[bytes], cd_start: int, cd_end: int, concat: int) -> Iterator[Record]:
    """Each directory record, with the checks zipfile makes when it reads the directory."""
    f.seek(cd_start)
    at = cd_start
    while at < cd_end:
        header = f.read(_CD_RECORD.size)
        if len(header) != _CD_RECORD.size:
            raise zipfile.BadZipFile("Truncated central directory")
        (signature, version, flags, method, crc, packed, size, name_length, extra_length,
         comment_length, external, offset) = _CD_RECORD.unpack(header)
        if signature != b"PK\x01\x02":
            raise zipfile.BadZipFile("Bad magic number for central directory")
        if version > zipfile.MAX_EXTRACT_VERSION:
            raise NotImplementedError(f"zip file version {version / 10:.1f}")
        stored = f.read(name_length).decode("utf-8" if flags & _UTF8_NAME else "cp437")
        packed, size, offset = _zip64(f.read(extra_length), packed, size, offset)
        f.seek(comment_length, 1)
        at += _CD_RECORD.size + name_length + extra_length + comment_length
        name = stored.split("\0", 1)[0]
        yield Record(name, stored, name_length, flags, method, crc, packed, size, offset + concat,
                     external)


def _zip64(extra: bytes, packed: int, size: int, offset: int) -> tuple[int, int, int]:
    """Sizes and offset that overflowed 32 bits, from the zip64 extra field (APPNOTE 4.5.3)."""
    while len(extra) >= 4:
        kind, length = struct.unpack("<HH", extra[:4])
        if length + 4 > len(extra):
            raise zipfile.BadZipFile(f"Corrupt extra field {kind:04x} (size={length})")
        if kind == _ZIP64_EXTRA:
            values = iter(struct.unpack(f"<{length // 8}Q", extra[4 : 4 + length // 8 * 8]))
            try:
                if size in (0xFFFF_FFFF_FFFF_FFFF, 0xFFFF_FFFF):
                    size = next(values)
                if packed == 0xFFFF_FFFF:
                    packed = next(values)
                if offset == 0xFFFF_FFFF:
                    offset = next(values)
            except StopIteration:
                raise zipfile.BadZipFile("Corrupt zip64 extra field") from None
        extra = extra[length + 4 :]
    return packed, size, offset


def _refuse_overlaps(records: Iterator[Record], cd_start: int) -> int:
    """Each member's header and data must end before the next member (or the directory) starts.

    Returns the number of entries. Spans are kept as two arrays of integers (16 bytes an entry).
    """
    starts, ends = array.array("Q"), array.array("Q")
    for record in records:
        starts.append(record.offset)
        # A lower bound: the local extra field and data descriptor only push the real end further.
        ends.append(record.offset + _LOCAL_HEADER.size + record.name_length + record.packed)
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


def _open_member(f: IO[bytes], record: Record, max_bytes: int) -> IO[bytes]:
    """The checks `ZipFile.open` makes on the local header, then a stream of the member's bytes.

    The stream may run one byte past `max_bytes` (or, read whole, past the declared size) rather
    than stop where the header says: a header that lies small is then caught by the meter
    instead of read as a CRC error.
    """
    f.seek(record.offset)
    header = f.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size:
        raise zipfile.BadZipFile("Truncated file header")
    signature, flags, _, name_length, extra_length = _LOCAL_HEADER.unpack(header)
    if signature != b"PK\x03\x04":
        raise zipfile.BadZipFile("Bad magic number for file header")
    name = f.read(name_length).decode("utf-8" if flags & _UTF8_NAME else "cp437")
    f.seek(extra_length, 1)
    for flag, what in _UNSUPPORTED_FLAGS.items():
        if record.flags & flag:
            raise NotImplementedError(what)
    if name != record.stored_name:
        raise zipfile.BadZipFile(
            f"File name in directory {record.stored_name!r} and header {name!r} differ."
        )
    small = max(record.packed, record.size) <= SMALL_MEMBER_BYTES
    if small and record.method in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        return _read_whole(f, record)
    info = zipfile.ZipInfo(record.stored_name)
    info.compress_type, info.flag_bits, info.CRC = record.method, record.flags, record.crc
    info.compress_size, info.file_size = record.packed, max_bytes + 1
    return cast(IO[bytes], zipfile.ZipExtFile(f, "r", info))


def _read_whole(f: IO[bytes], record: Record) -> IO[bytes]:
    """A small member decompressed in one call, at most one byte past its declared size."""
    packed = f.read(record.packed)
    if record.method == zipfile.ZIP_STORED:
        return _Checked(packed, record.crc, complete=len(packed) == record.packed)
    inflate = zlib.decompressobj(-zlib.MAX_WBITS)
    data = inflate.decompress(packed, record.size + 1)
    return _Checked(data, record.crc, complete=inflate.eof)


class _Checked(io.BytesIO):
    """Bytes whose CRC is compared once they have all been read, as `ZipExtFile` does."""

    def __init__(self, data: bytes, crc: int, *, complete: bool) -> None:
        super().__init__(data)
        self._crc = zlib.crc32(data)
        self._expected, self._complete = crc, complete

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        if not data and size != 0:
            if not self._complete:
                raise EOFError("Compressed file ended before the end-of-stream marker was reached")
            if self._crc != self._expected:
                raise zipfile.BadZipFile("Bad CRC-32")
        return data

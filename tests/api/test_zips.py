"""The zip reader walks the central directory itself: it must read what `zipfile` reads."""

from __future__ import annotations

import random
import zipfile
from pathlib import Path

import pytest

from api import zips
from api.archives import IntakeLimits, MemberError, Meter
from api.zips import ZipArchive

LIMITS = IntakeLimits(max_entries=5_000, max_member_bytes=8 << 20)


@pytest.fixture(params=["whole", "streamed"])
def read_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Small members are read in one call; the others (here: all) through zipfile's stream."""
    if request.param == "streamed":
        monkeypatch.setattr(zips, "SMALL_MEMBER_BYTES", 0)
    return str(request.param)


def read_all(path: Path) -> list[tuple[str, str, int, bytes]]:
    """(name, kind, declared size, bytes) of every member, through our reader."""
    archive = ZipArchive(path, Meter(LIMITS))
    try:
        out = []
        for member in archive.members():
            data = b""
            if member.kind == "file":
                with archive.open(member) as stream:
                    while chunk := stream.read():
                        data += chunk
            out.append((member.name, member.kind, member.size, data))
        assert archive.entries == len(out)
        return out
    finally:
        archive.close()


def read_with_zipfile(path: Path) -> list[tuple[str, int, bytes]]:
    with zipfile.ZipFile(path) as zf:
        return [(i.filename, i.file_size, b"" if i.is_dir() else zf.read(i)) for i in zf.infolist()]


@pytest.mark.parametrize(
    "compression",
    [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA],
)
def test_zip_reader_reads_what_zipfile_reads(tmp_path: Path, compression: int, read_path: str) -> None:
    rng = random.Random(compression)
    path = tmp_path / "mixed.zip"
    with zipfile.ZipFile(path, "w", compression) as zf:
        zf.writestr("photos/", b"")
        zf.writestr("photos/ünïcode ✓.png", rng.randbytes(5_000))
        zf.writestr(zipfile.ZipInfo("plain name.bin"), b"x" * 10_000)
        with zf.open("photos/large.bin", "w", force_zip64=True) as member:  # zip64 extra field
            member.write(rng.randbytes(300_000))
        for i in range(200):
            zf.writestr(f"many/{i:03d}.txt", rng.randbytes(rng.randrange(1, 300)))
    ours = read_all(path)
    assert [(name, size, data) for name, _, size, data in ours] == read_with_zipfile(path)
    assert ours[0][1] == "dir" and {kind for _, kind, _, _ in ours[1:]} == {"file"}


def test_zip_reader_follows_a_stub_before_the_zip(tmp_path: Path, read_path: str) -> None:
    """A self-extractor's stub shifts every offset, as zipfile allows."""
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(5):
            zf.writestr(f"{i}.bin", bytes([i]) * 1_000)
    stubbed = tmp_path / "stubbed.zip"
    stubbed.write_bytes(b"#!/bin/sh\nexit 0\n" * 30 + plain.read_bytes())
    assert [row[1:] for row in read_with_zipfile(stubbed)] == [
        (size, data) for _, _, size, data in read_all(stubbed)
    ]


def test_zip_reader_holds_no_record_per_entry(tmp_path: Path) -> None:
    """Members are produced from the directory one at a time (memory flat in the entry count)."""
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(3_000):
            zf.writestr(f"{i:04d}.txt", b"x")
    archive = ZipArchive(path, Meter(LIMITS))
    try:
        held = [value for value in vars(archive).values() if isinstance(value, list | dict | tuple)]
        assert all(len(value) < 10 for value in held), held
        assert sum(1 for _ in archive.members()) == archive.entries == 3_000
    finally:
        archive.close()


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
@pytest.mark.parametrize("damage", ["crc", "data"])
def test_zip_reader_refuses_a_damaged_member_either_way(
    tmp_path: Path, compression: int, damage: str, read_path: str
) -> None:
    """A wrong CRC or damaged data is a corrupt member on both read paths."""
    data = random.Random(5).randbytes(4_000)
    path = tmp_path / "damaged.zip"
    with zipfile.ZipFile(path, "w", compression) as zf:
        zf.writestr("a.bin", data)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("a.bin")
    if damage == "crc":  # in the central directory, which is what both readers trust
        at = raw.rfind(b"PK\x01\x02") + 16
        raw[at : at + 4] = ((info.CRC ^ 1) & 0xFFFF_FFFF).to_bytes(4, "little")
    else:  # the second half of the member's data zeroed
        start = info.header_offset + 30 + len("a.bin")
        raw[start + info.compress_size // 2 : start + info.compress_size] = bytes(
            info.compress_size - info.compress_size // 2
        )
    path.write_bytes(bytes(raw))
    archive = ZipArchive(path, Meter(LIMITS))
    try:
        member = next(archive.members())
        with pytest.raises(MemberError) as caught, archive.open(member) as stream:
            while stream.read():
                pass
        assert caught.value.reason == "corrupt_member"
    finally:
        archive.close()

"""Hostile and broken uploads: every archive is built here, in code, under tmp_path."""

from __future__ import annotations

import asyncio
import bz2
import gzip
import io
import lzma
import random
import struct
import tarfile
import time
import tracemalloc
import zipfile
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from PIL import Image

from api import archives
from api.intake import (
    AcceptedImage,
    IntakeError,
    IntakeLimits,
    IntakeResult,
    SkippedEntry,
    extract_images,
    problem_body,
    save_upload,
)
from store.blobs import PACK_NAME

LIMITS = IntakeLimits(
    max_upload_bytes=1 << 20,
    max_entries=1_000,
    max_member_bytes=2 << 20,
    max_total_bytes=6 << 20,
    max_ratio=50.0,
    max_pixels=1_000_000,
)


def png(size: tuple[int, int] = (8, 8), colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


def noisy_png(side: int = 64, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3)).save(out, "PNG")
    return out.getvalue()


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data, zipfile.ZIP_DEFLATED)
    return path


def tar_bytes(members: dict[str, bytes], links: dict[str, tuple[bytes, str]] | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tf:
        for name, (kind, target) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tf.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return out.getvalue()


def crafted_png(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR (valid CRC) declares `width` x `height` RGB pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def patch_zip(data: bytes, name: str, **fields: int) -> bytes:
    """Overwrite header fields of member `name` in both its local and central records."""
    local = {"flags": (6, "<H"), "file_size": (22, "<L")}
    central = {"flags": (8, "<H"), "file_size": (24, "<L"), "header_offset": (42, "<L")}
    out = bytearray(data)
    encoded = name.encode()
    for signature, layout, name_at in ((b"PK\x03\x04", local, 30), (b"PK\x01\x02", central, 46)):
        at = out.find(signature)
        while at >= 0:
            if out[at + name_at : at + name_at + len(encoded)] == encoded:
                for field, value in fields.items():
                    if field in layout:
                        offset, fmt = layout[field]
                        struct.pack_into(fmt, out, at + offset, value)
            at = out.find(signature, at + 1)
    return bytes(out)


def many_entries_zip(n: int, *, declared: int | None = None) -> bytes:
    """A zip64 of `n` empty members built by hand (fast); `declared` makes its end record lie."""
    body, directory = bytearray(), bytearray()
    for i in range(n):
        name = str(i).encode()
        directory += (
            struct.pack(
                "<4s6H3L5H2L",
                b"PK\x01\x02",
                20,
                20,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                len(name),
                0,
                0,
                0,
                0,
                0,
                len(body),
            )
            + name
        )
        body += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, len(name), 0)
        body += name
    count = n if declared is None else declared
    end = struct.pack(
        "<4s4H2LH",
        b"PK\x05\x06",
        0,
        0,
        min(count, 0xFFFF),
        min(count, 0xFFFF),
        len(directory),
        len(body),
        0,
    )
    if declared is None:
        zip64_at = len(body) + len(directory)
        end = (
            struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, n, n, len(directory), len(body))
            + struct.pack("<4sLQL", b"PK\x06\x07", 0, zip64_at, 1)
            + end
        )
    return bytes(body + directory + end)


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "job" / "images"


def refused(archive: Path, dest: Path, limits: IntakeLimits = LIMITS) -> IntakeError:
    with pytest.raises(IntakeError) as caught:
        extract_images(archive, dest, limits)
    assert not dest.exists() or not any(dest.iterdir()), "a refused archive left files behind"
    return caught.value


def reasons(skipped: list[SkippedEntry]) -> dict[str, str]:
    return {entry.path: entry.reason for entry in skipped}


def assert_pack_holds_only_accepted(dest: Path, result: IntakeResult, members: dict[str, bytes]) -> None:
    """The folder holds the pack alone, and the pack exactly the accepted members' bytes."""
    assert [p.name for p in dest.iterdir()] == [PACK_NAME]
    assert all(stored(dest, image) == members[image.path] for image in result.images)
    by_offset = sorted(result.images, key=lambda image: image.blob_offset)
    expected = b"".join(members[image.path] for image in by_offset)
    assert (dest / PACK_NAME).read_bytes() == expected, "a skipped member's bytes were kept"


def stored(dest: Path, image: AcceptedImage) -> bytes:
    """The bytes intake kept for `image`, read back from its pack."""
    with (dest / image.blob_name).open("rb") as pack:
        pack.seek(image.blob_offset)
        return pack.read(image.size_bytes)


# --- not an archive, empty, nothing readable ---------------------------------------------------


@pytest.mark.parametrize("content", [random.Random(1).randbytes(4096), png(), b"", gzip.compress(png())])
def test_intake_not_an_archive_is_415(tmp_path: Path, dest: Path, content: bytes) -> None:
    (tmp_path / "upload.zip").write_bytes(content)
    error = refused(tmp_path / "upload.zip", dest)
    assert (error.status, error.type) == (415, "not-an-archive")


def test_intake_empty_zip_is_422_with_counts(tmp_path: Path, dest: Path) -> None:
    error = refused(write_zip(tmp_path / "empty.zip", {}), dest)
    assert (error.status, error.type) == (422, "no-images")
    assert error.extra["entries"] == 0 and error.extra["images"] == 0


def test_intake_only_non_images_is_422_with_counts(tmp_path: Path, dest: Path) -> None:
    members = {"a.txt": b"hello", "b.csv": b"1,2", "c.png": b"", ".hidden.png": png()}
    error = refused(write_zip(tmp_path / "docs.zip", members), dest)
    assert (error.status, error.type) == (422, "no-images")
    assert error.extra["entries"] == 4 and error.extra["skipped"] == 4
    assert error.extra["skipped_reasons"] == {"not_an_image": 2, "empty_file": 1, "hidden": 1}
    assert "4 entries" in error.detail


# --- bombs -------------------------------------------------------------------------------------


@pytest.fixture
def produced(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Sizes of the chunks member streams handed out (each one is written to disk)."""
    sizes: list[int] = []
    original = archives.MemberStream.read

    def spy(self: archives.MemberStream, n: int = archives.CHUNK) -> bytes:
        data = original(self, n)
        sizes.append(len(data))
        return data

    monkeypatch.setattr(archives.MemberStream, "read", spy)
    return sizes


def test_intake_member_lying_about_its_size_stops_at_the_claim(tmp_path: Path, dest: Path, produced: list[int]) -> None:
    data = b"\x89PNG\r\n\x1a\n" + bytes(50 << 20)  # 50 MiB of zeros that claim to be 1,000 bytes
    plain = write_zip(tmp_path / "plain.zip", {"a.png": png(), "bomb.png": data}).read_bytes()
    (tmp_path / "lie.zip").write_bytes(patch_zip(plain, "bomb.png", file_size=1_000))
    error = refused(tmp_path / "lie.zip", dest)
    assert (error.status, error.type) == (422, "zip-bomb")
    assert "declares 1,000 bytes" in error.detail
    assert sum(produced) <= len(png()) + 1_000


def test_intake_high_ratio_member_is_refused_from_its_header(tmp_path: Path, dest: Path, produced: list[int]) -> None:
    members = {"a.png": png(), "bomb.png": b"\x89PNG\r\n\x1a\n" + bytes(16 << 20)}
    error = refused(write_zip(tmp_path / "ratio.zip", members), dest)
    assert (error.status, error.type) == (422, "zip-bomb")
    assert "compression ratio" in error.detail
    assert sum(produced) <= len(png())


def test_intake_total_cap_stops_after_at_most_the_cap(tmp_path: Path, dest: Path, produced: list[int]) -> None:
    rng = random.Random(2)  # incompressible: no ratio cap, each member under the member cap
    members = {f"{i}.png": b"\x89PNG\r\n\x1a\n" + rng.randbytes(1_400_000) for i in range(8)}
    error = refused(write_zip(tmp_path / "total.zip", members), dest)
    assert (error.status, error.type) == (422, "zip-bomb")
    assert sum(produced) <= LIMITS.max_total_bytes


def test_intake_tar_gz_bomb_is_capped(tmp_path: Path, dest: Path) -> None:
    payload = tar_bytes({"a.png": png(), "zeros.bin": bytes(64 << 20)})
    (tmp_path / "bomb.tgz").write_bytes(gzip.compress(payload, compresslevel=9))
    started = time.perf_counter()
    error = refused(tmp_path / "bomb.tgz", dest)
    assert (error.status, error.type) == (422, "zip-bomb")
    assert time.perf_counter() - started < 5


def test_intake_overlapping_entries_is_422(tmp_path: Path, dest: Path) -> None:
    plain = write_zip(tmp_path / "plain.zip", {"a.png": png(), "b.png": png()}).read_bytes()
    (tmp_path / "overlap.zip").write_bytes(patch_zip(plain, "b.png", header_offset=0))
    error = refused(tmp_path / "overlap.zip", dest)
    assert (error.status, error.type) == (422, "overlapping-entries")


def test_intake_too_many_entries_refused_before_any_write(
    tmp_path: Path, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    limits = IntakeLimits(max_entries=100_000)
    (tmp_path / "many.zip").write_bytes(many_entries_zip(120_000))
    (tmp_path / "lying.zip").write_bytes(many_entries_zip(120_000, declared=5))

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("zipfile indexed an archive that should have been refused")

    monkeypatch.setattr(zipfile.ZipFile, "__init__", never)
    for name in ("many.zip", "lying.zip"):
        started = time.perf_counter()
        error = refused(tmp_path / name, dest, limits)
        assert (error.status, error.type) == (422, "too-many-entries")
        assert error.extra["max_entries"] == 100_000 and error.extra["entries"] > 100_000
        assert time.perf_counter() - started < 5


def test_intake_hand_built_zip_is_read_normally(tmp_path: Path, dest: Path) -> None:
    (tmp_path / "three.zip").write_bytes(many_entries_zip(3))
    error = refused(tmp_path / "three.zip", dest)
    assert error.type == "no-images" and error.extra["skipped_reasons"] == {"empty_file": 3}


def test_intake_too_many_tar_entries_refused(tmp_path: Path, dest: Path) -> None:
    (tmp_path / "many.tar").write_bytes(tar_bytes({f"{i}.png": png() for i in range(11)}))
    limits = IntakeLimits(max_entries=10)
    error = refused(tmp_path / "many.tar", dest, limits)
    assert (error.status, error.type) == (422, "too-many-entries")


# --- paths and links ---------------------------------------------------------------------------


def assert_only_generated_names(dest: Path, tmp_path: Path, before: set[Path]) -> None:
    created = set(tmp_path.rglob("*")) - before - {dest, dest.parent}
    assert created == {dest / PACK_NAME}, created
    assert not (dest / PACK_NAME).is_symlink()


def test_intake_zip_paths_never_escape_dest(tmp_path: Path, dest: Path) -> None:
    names = [
        "../evil.png",
        "/abs.png",
        "C:\\evil.png",
        "C:/evil.png",
        "a/../../up.png",
        "\\\\server\\share.png",
        "ok/..\\..\\x.png",
    ]
    members = {name: png() for name in names} | {"good/a.png": png()}
    archive = write_zip(tmp_path / "paths.zip", members)
    link = zipfile.ZipInfo("link.png")
    link.external_attr = 0o120777 << 16  # S_IFLNK: a symlink to outside
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr(link, "../../outside.png")
    before = set(tmp_path.rglob("*"))
    result = extract_images(archive, dest, LIMITS)
    assert [image.path for image in result.images] == ["good/a.png"]
    skipped = reasons(result.skipped)
    assert skipped.pop("link.png") == "link"
    assert set(skipped.values()) == {"unsafe_path"} and len(skipped) == len(names)
    assert_only_generated_names(dest, tmp_path, before)


def test_intake_tar_links_and_paths_never_escape_dest(tmp_path: Path, dest: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    links = {
        "sym.png": (tarfile.SYMTYPE, str(outside / "sym.png")),
        "hard.png": (tarfile.LNKTYPE, "/etc/passwd"),
        "escape": (tarfile.SYMTYPE, "../../outside"),
    }
    members = {
        "escape/planted.png": png(),
        "../up.png": png(),
        "/abs.png": png(),
        "sym.png": png(),
        "good.png": png(),
    }
    (tmp_path / "links.tar").write_bytes(tar_bytes(members, links))
    before = set(tmp_path.rglob("*"))
    result = extract_images(tmp_path / "links.tar", dest, LIMITS)
    assert not any(outside.iterdir())
    # The regular files named like a link or under one are plain bytes stored under new names.
    assert {i.path for i in result.images} == {"good.png", "escape/planted.png", "sym.png"}
    skipped = [(entry.path, entry.reason) for entry in result.skipped]
    assert ("sym.png", "link") in skipped and ("hard.png", "link") in skipped
    assert {reason for path, reason in skipped if "up.png" in path or "abs" in path} == {"unsafe_path"}
    assert_only_generated_names(dest, tmp_path, before)


# --- skipped members ---------------------------------------------------------------------------


def test_intake_skips_unusable_members_with_reasons(tmp_path: Path, dest: Path) -> None:
    inner = write_zip(tmp_path / "inner.zip", {"x.png": png()}).read_bytes()
    members = {
        "cats/a.png": png(),
        "cats/b.jpg": jpeg(),
        "inner.zip": inner,
        "inner.tar.gz": gzip.compress(tar_bytes({"x.png": png()})),
        "secret.png": png(),
        "__MACOSX/cats/._a.png": b"\0\5\26\7",
        "cats/.DS_Store": b"\0",
        ".git/config": b"[core]",
        "cats/.hidden.png": png(),
        "notes.txt": b"just text",
        "icon.ico": ico(),
        "cats/": b"",
    }
    plain = write_zip(tmp_path / "mixed.zip", members).read_bytes()
    (tmp_path / "mixed.zip").write_bytes(patch_zip(plain, "secret.png", flags=0x1))
    result = extract_images(tmp_path / "mixed.zip", dest, LIMITS)
    assert [(image.path, image.format) for image in result.images] == [
        ("cats/a.png", "PNG"),
        ("cats/b.jpg", "JPEG"),
    ]
    assert reasons(result.skipped) == {
        "inner.zip": "nested_archive",
        "inner.tar.gz": "nested_archive",
        "secret.png": "encrypted",
        "__MACOSX/cats/._a.png": "macos_metadata",
        "cats/.DS_Store": "macos_metadata",
        ".git/config": "hidden",
        "cats/.hidden.png": "hidden",
        "notes.txt": "not_an_image",
        "icon.ico": "format_not_allowed",
    }
    assert result.entries == len(members)
    assert_pack_holds_only_accepted(dest, result, members)


def jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 120, 200)).save(out, "JPEG")
    return out.getvalue()


def ico() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 120, 200)).save(out, "ICO")
    return out.getvalue()


@pytest.mark.parametrize("pillow_guard", [Image.MAX_IMAGE_PIXELS, None])
def test_intake_too_many_pixels_skipped_before_decoding(
    tmp_path: Path, dest: Path, monkeypatch: pytest.MonkeyPatch, pillow_guard: int | None
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillow_guard)  # ours must not depend on it
    bomb = crafted_png(30_000, 30_000)
    assert len(bomb) < 200
    archive = write_zip(tmp_path / "pixels.zip", {"huge.png": bomb, "wide.png": crafted_png(2_000, 1_000)})
    allocations = Image.core.get_stats()["new_count"]
    tracemalloc.start()
    try:
        error = refused(archive, dest, LIMITS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert error.extra["skipped_reasons"] == {"too_many_pixels": 2}
    assert Image.core.get_stats()["new_count"] == allocations, "Pillow allocated an image"
    assert peak < 4 << 20


def test_intake_broken_images_skipped_and_rest_accepted(tmp_path: Path, dest: Path) -> None:
    whole = noisy_png(64)
    members = {
        "good.png": png(),
        "truncated.png": whole[: len(whole) // 2],
        "zero.png": b"",
        "random.png": random.Random(7).randbytes(2048),
        "garbage.png": b"\x89PNG\r\n\x1a\n" + random.Random(8).randbytes(2048),
        "cut.jpg": jpeg()[:200],
    }
    result = extract_images(write_zip(tmp_path / "broken.zip", members), dest, LIMITS)
    assert [image.path for image in result.images] == ["good.png"]
    assert reasons(result.skipped) == {
        "truncated.png": "truncated_image",
        "zero.png": "empty_file",
        "random.png": "not_an_image",
        "garbage.png": "unreadable_image",
        "cut.jpg": "truncated_image",
    }
    assert_pack_holds_only_accepted(dest, result, members)


def test_intake_checks_large_members_from_the_pack_and_cuts_skipped_ones(
    tmp_path: Path, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Members too big to keep in memory are checked from the pack, through a slice of it."""
    monkeypatch.setattr("api.intake.VERIFY_IN_MEMORY_BYTES", 1_000)
    whole = noisy_png(64)
    assert len(whole) > 1_000
    members = {"a.png": whole, "cut.png": whole[: len(whole) // 2], "b.png": noisy_png(64, seed=1)}
    result = extract_images(write_zip(tmp_path / "large.zip", members), dest, LIMITS)
    assert [(image.path, image.width) for image in result.images] == [("a.png", 64), ("b.png", 64)]
    assert reasons(result.skipped) == {"cut.png": "truncated_image"}
    assert_pack_holds_only_accepted(dest, result, members)


def test_intake_member_over_the_member_cap_is_skipped(tmp_path: Path, dest: Path) -> None:
    members = {"a.png": png(), "big.png": random.Random(4).randbytes(3 << 20)}  # cap: 2 MiB
    result = extract_images(write_zip(tmp_path / "big.zip", members), dest, LIMITS)
    assert reasons(result.skipped) == {"big.png": "member_too_large"}


# --- formats -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("compress", "expected"),
    [
        (lambda b: b, "tar"),
        (gzip.compress, "tar.gz"),
        (bz2.compress, "tar.bz2"),
        (lzma.compress, "tar.xz"),
    ],
)
def test_intake_tar_detected_by_content_whatever_the_name(
    tmp_path: Path,
    dest: Path,
    compress: Callable[[bytes], bytes],
    expected: str,
) -> None:
    members = {"./b/2.png": png(colour=(1, 2, 3)), "a/1.png": png(), "b/3.gif": gif()}
    (tmp_path / "photo.zip").write_bytes(compress(tar_bytes(members)))
    result = extract_images(tmp_path / "photo.zip", dest, LIMITS)
    assert result.archive_format == expected
    assert [image.path for image in result.images] == ["a/1.png", "b/2.png", "b/3.gif"]
    assert all(image.width == 8 for image in result.images)


def gif() -> bytes:
    out = io.BytesIO()
    Image.new("P", (8, 8)).save(out, "GIF")
    return out.getvalue()


def test_intake_zip_blob_names_are_generated(tmp_path: Path, dest: Path) -> None:
    members = {"z/last.png": png(), "a/first.png": png(), "evil;rm -rf.png": png()}
    result = extract_images(write_zip(tmp_path / "names.zip", members), dest, LIMITS)
    assert [image.path for image in result.images] == [
        "a/first.png",
        "evil;rm -rf.png",
        "z/last.png",
    ]
    assert {image.blob_name for image in result.images} == {PACK_NAME}
    assert [image.blob_offset for image in result.images] == [len(png()), 2 * len(png()), 0]
    assert all(stored(dest, image) == png() for image in result.images)


# --- nothing left behind -----------------------------------------------------------------------


def test_intake_failure_after_accepting_images_removes_them(tmp_path: Path, dest: Path) -> None:
    good = {f"{i}.png": png(colour=(i, i, i)) for i in range(5)}
    bomb = b"\x89PNG\r\n\x1a\n" + bytes(10 << 20)
    plain = write_zip(tmp_path / "late.zip", good | {"z.png": bomb}).read_bytes()
    (tmp_path / "late.zip").write_bytes(patch_zip(plain, "z.png", file_size=100))
    dest.mkdir(parents=True)
    (dest / "keep.txt").write_text("not ours")
    with pytest.raises(IntakeError, match="declares 100 bytes"):
        extract_images(tmp_path / "late.zip", dest, LIMITS)
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_intake_corrupt_archives_are_422_not_500(tmp_path: Path, dest: Path, cut: float) -> None:
    members = {f"{i}.png": noisy_png(48, seed=i) for i in range(6)}
    whole = write_zip(tmp_path / "whole.zip", members).read_bytes()
    targz = gzip.compress(tar_bytes(members))
    for name, data in (("cut.zip", whole), ("cut.tgz", targz)):
        (tmp_path / name).write_bytes(data[: int(len(data) * cut)])
        error = refused(tmp_path / name, dest)
        assert (error.status, error.type) == (422, "corrupt-archive"), error.detail


def test_intake_unexpected_exception_becomes_corrupt_archive(
    tmp_path: Path, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*args: object) -> None:
        raise IndexError("decoder bug")

    monkeypatch.setattr("api.intake._check_image", explode)
    error = refused(write_zip(tmp_path / "a.zip", {"a.png": png()}), dest)
    assert (error.status, error.type) == (422, "corrupt-archive")


# --- save_upload and problem bodies ------------------------------------------------------------


async def chunks_of(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_save_upload_over_the_limit_is_413_and_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "upload.bin"
    with pytest.raises(IntakeError) as caught:
        asyncio.run(save_upload(chunks_of(bytes(10_001)), target, max_bytes=10_000))
    assert (caught.value.status, caught.value.type) == (413, "archive-too-large")
    assert not target.exists()


def test_save_upload_streams_to_the_file(tmp_path: Path) -> None:
    data = random.Random(3).randbytes(10_000)
    target = tmp_path / "upload.bin"
    assert asyncio.run(save_upload(chunks_of(data), target, max_bytes=10_000)) == 10_000
    assert target.read_bytes() == data


def test_problem_body_is_rfc_9457(tmp_path: Path, dest: Path) -> None:
    error = refused(write_zip(tmp_path / "empty.zip", {}), dest)
    body = problem_body(error)
    assert body["type"] == "https://corral.dev/problems/no-images"
    assert (body["status"], body["title"]) == (422, "No readable images")
    assert body["detail"] == "The archive is empty." and body["entries"] == 0


def test_intake_never_overwrites_or_removes_files_it_did_not_write(tmp_path: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    (dest / PACK_NAME).write_bytes(b"someone else's")
    members = {"a.png": png(), "b.png": png()}
    error = refused_keeping(write_zip(tmp_path / "clash.zip", members), dest)
    assert error.status == 422
    assert sorted(p.name for p in dest.iterdir()) == [PACK_NAME]
    assert (dest / PACK_NAME).read_bytes() == b"someone else's"


def refused_keeping(archive: Path, dest: Path) -> IntakeError:
    with pytest.raises(IntakeError) as caught:
        extract_images(archive, dest, LIMITS)
    return caught.value

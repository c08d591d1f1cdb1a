import io
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from PIL import Image

from core.data.images import auto_image_size, folder_labels, read_images, top_folder


def png(array: np.ndarray, fmt: str = "PNG", **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def grey(value: int, size: int = 20) -> np.ndarray:
    return np.full((size, size), value, dtype=np.uint8)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "set"
    for name in ("cats", "dogs"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            (root / name / f"{i}.png").write_bytes(png(grey(40 * i + (100 if name == "dogs" else 0))))
    (root / "dogs" / "broken.png").write_bytes(b"not an image at all")
    (root / "dogs" / "empty.jpg").write_bytes(b"")
    (root / "dogs" / "notes.txt").write_text("hello")
    (root / ".DS_Store").write_bytes(b"junk")
    return root


def test_folder_decodes_in_sorted_order_with_class_labels(folder: Path):
    image_set = read_images(folder)
    assert image_set.paths == [f"cats/{i}.png" for i in range(3)] + [f"dogs/{i}.png" for i in range(3)]
    assert image_set.images.shape == (6, 1, 32, 32)  # grey stays 1-channel, 20 px -> 32 px
    assert image_set.class_names == ["cats", "dogs"]
    assert image_set.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_unreadable_files_are_skipped_with_reasons(folder: Path):
    skipped = dict(read_images(folder).skipped)
    assert skipped == {"dogs/broken.png": "unreadable_image", "dogs/empty.jpg": "empty_file",
                       "dogs/notes.txt": "not_an_image"}


def test_zip_and_tar_give_the_same_set(folder: Path, tmp_path: Path):
    files = sorted(p for p in folder.rglob("*.png"))
    with zipfile.ZipFile(tmp_path / "set.zip", "w") as archive:
        for file in files:
            archive.write(file, file.relative_to(folder).as_posix())
    with tarfile.open(tmp_path / "set.tar.gz", "w:gz") as archive:
        for file in files:
            archive.add(file, file.relative_to(folder).as_posix())
    from_zip, from_tar = read_images(tmp_path / "set.zip"), read_images(tmp_path / "set.tar.gz")
    assert from_zip.paths == from_tar.paths
    assert (from_zip.images == from_tar.images).all()


def test_mixed_grey_and_colour_become_rgb(tmp_path: Path):
    (tmp_path / "a.png").write_bytes(png(grey(10)))
    (tmp_path / "b.png").write_bytes(png(np.zeros((20, 20, 3), dtype=np.uint8)))
    assert read_images(tmp_path).images.shape == (2, 3, 32, 32)


def test_large_images_work_at_64_px_and_size_is_overridable(tmp_path: Path):
    (tmp_path / "a.jpg").write_bytes(png(np.zeros((200, 300, 3), dtype=np.uint8), "JPEG"))
    assert read_images(tmp_path).images.shape == (1, 3, 64, 64)
    assert read_images(tmp_path, image_size=48).images.shape == (1, 3, 48, 48)
    assert auto_image_size([28, 28, 30]) == 28 and auto_image_size([24, 32]) == 28  # 24-32 px keep their size
    assert auto_image_size([8, 8]) == 32 and auto_image_size([23]) == 32 and auto_image_size([40, 48]) == 32
    assert auto_image_size([32]) == 32 and auto_image_size([96, 100]) == 64


def test_mnist_sized_images_keep_their_28_px(tmp_path: Path):
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(png(grey(40 * i, size=28)))
    decoded = read_images(tmp_path)
    assert decoded.images.shape == (3, 1, 28, 28) and decoded.images[2].max() == 80  # not resampled


def test_exif_orientation_is_applied(tmp_path: Path):
    # a 40x20 image, left half black, right half white, stored with "rotate 90" in EXIF
    array = np.zeros((20, 40), dtype=np.uint8)
    array[:, 20:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", exif=exif.tobytes(), quality=95)
    (tmp_path / "turned.jpg").write_bytes(buffer.getvalue())
    decoded = read_images(tmp_path, image_size=20).images[0, 0].numpy().astype(int)
    # turned 90 degrees clockwise the black left half becomes the top: rows, not columns, differ
    assert decoded[:5].mean() < 50 and decoded[-5:].mean() > 200


def test_gif_gives_its_first_frame(tmp_path: Path):
    frames = [Image.fromarray(grey(0)), Image.fromarray(grey(255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    (tmp_path / "anim.gif").write_bytes(buffer.getvalue())
    assert int(read_images(tmp_path).images.max()) == 0


def test_missing_path_is_a_value_error(tmp_path: Path):
    with pytest.raises(ValueError, match="does not exist"):
        read_images(tmp_path / "nope")


@pytest.mark.parametrize("path", ["cat/1.png", "cat/sub/1.png", "1.png", "./cat/1.png", "cat//1.png", "/cat/1.png",
                                  "cat/./1.png", "cat/", "./1.png", "//cat/1.png", "../cat/1.png", ""])
def test_top_folder_is_pure_posix_paths_first_part(path: str):
    parts = PurePosixPath(path).parts
    assert top_folder(path) == (parts[0] if len(parts) > 1 else None)


def test_folder_labels_number_the_sorted_top_folders():
    labels, names = folder_labels(["dog/2.png", "cat/1.png", "./dog/3.png", "cat/x/4.png"])
    assert names == ["cat", "dog"] and labels is not None and labels.tolist() == [1, 0, 1, 0]
    assert folder_labels(["cat/1.png", "2.png"]) == (None, [])  # one image outside every folder
    assert folder_labels(["cat/1.png", "cat/2.png"]) == (None, [])  # a single class

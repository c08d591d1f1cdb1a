"""Previews for the web pages: decoded and re-encoded by the server, bounded in size, cached.

The uploaded bytes are never served back as a preview: a file that is also valid HTML or SVG,
or an image crafted against a browser's decoder, becomes a plain JPEG made by Pillow.
"""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path

from PIL import Image, ImageOps

from store import blobs
from store.results import ImageFile
from store.settings import Settings

SIDE = 128  # px, the longer side of a preview
QUALITY = 85


def thumbnail_path(settings: Settings, job_id: uuid.UUID, image: ImageFile) -> Path:
    """The cached preview of one image, made on first request."""
    path = blobs.thumbnails_dir(settings, job_id) / f"{image.image_id}.jpg"
    if not path.is_file():
        data = render(blobs.read_image(settings, job_id, image))
        path.parent.mkdir(exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")  # concurrent makers race safely
        partial.write_bytes(data)
        partial.replace(path)
    return path


def render(data: bytes, side: int = SIDE) -> bytes:
    """JPEG of at most side x side: first frame, EXIF orientation applied, alpha on white."""
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (side * 2, side * 2))  # JPEG: decode at a reduced scale
        image.seek(0)
        frame = ImageOps.exif_transpose(image) or image
        if frame.mode in ("RGBA", "LA", "P", "PA"):
            rgba = frame.convert("RGBA")
            frame = Image.new("RGB", rgba.size, "white")
            frame.paste(rgba, mask=rgba.getchannel("A"))
        elif frame.mode.startswith(("I", "F")):  # 16/32-bit grey: stretch into 8 bits
            frame = ImageOps.autocontrast(frame.convert("F").convert("L"))
        elif frame.mode not in ("RGB", "L"):
            frame = frame.convert("RGB")
        frame.thumbnail((side, side), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        frame.save(out, format="JPEG", quality=QUALITY)
    return out.getvalue()

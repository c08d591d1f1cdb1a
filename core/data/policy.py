"""Which files are images of a set: one policy for the library and the upload intake.

Importable without torch or Pillow (the API, which never loads torch, checks uploads with it).
"""

from __future__ import annotations

from pathlib import PurePosixPath

# Pillow's openers we run (`Image.open(..., formats=DECODERS)`), and the formats an image they
# opened may report: MPO is what the JPEG opener returns for a multi-picture JPEG (phone cameras).
DECODERS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")
ALLOWED_FORMATS = frozenset({*DECODERS, "MPO"})
MAX_PIXELS = 50_000_000  # per image, read from the header before anything is decoded


def hidden_reason(path: str) -> str | None:
    """`macos_metadata` or `hidden` for a file that is never an image of the set, else None.

    Dot-files, dot-folders and macOS's resource forks (`__MACOSX/`, `._name`, `.DS_Store`).
    """
    parts = PurePosixPath(path).parts
    if not parts:
        return None
    if "__MACOSX" in parts or parts[-1].startswith("._") or parts[-1] == ".DS_Store":
        return "macos_metadata"
    if any(part.startswith(".") for part in parts):
        return "hidden"
    return None

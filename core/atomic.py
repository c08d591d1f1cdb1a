"""Atomic file writes: a reader, or a restart after a crash, sees the old file or the whole new one.

The one way Corral replaces a file it may read back (checkpoints, models, embeddings, previews);
importable without torch.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call `write` on a new `<name>.<random>.partial` beside `path`, fsync it, rename it over `path`.

    The random part keeps concurrent writers (two requests making one preview) off each other's
    file; the fsync makes the rename never expose a file whose bytes are not on disk yet.
    """
    partial = path.with_name(f"{path.name}.{secrets.token_hex(4)}.partial")
    try:
        with open(partial, "xb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise

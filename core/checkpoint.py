"""Training-state checkpoints: written atomically at every epoch end, read back to resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from core.atomic import write_atomically


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Written atomically, so a crash never leaves a half-written checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda handle: torch.save(state, handle))


def load_checkpoint(path: Path | None, *, config: dict[str, Any], n_images: int) -> dict[str, Any] | None:
    """The saved state, or None when there is none; a checkpoint of another run raises."""
    if path is None or not path.exists():
        return None
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("config") != config or state.get("n_images") != n_images:
        raise ValueError(
            f"checkpoint {path} was written by a different run (config or image count differ); "
            "delete it or pass another checkpoint path"
        )
    return state

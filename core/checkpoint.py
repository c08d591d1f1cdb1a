"""Training-state checkpoints: written atomically at every epoch end, read back to resume."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.errors import InvalidInput


@dataclass(frozen=True)
class Checkpoint:
    """Where a run saves its training state, and which run it is: a checkpoint written with
    another config or image count is refused rather than resumed."""

    path: Path
    config: dict[str, Any]  # ClusterConfig.to_dict()
    n_images: int

    def save(self, state: dict[str, Any]) -> None:
        """Write to a temporary file and rename, so a crash never leaves a half-written checkpoint."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        torch.save({**state, "config": self.config, "n_images": self.n_images}, partial)
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, self.path)

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none yet."""
        if not self.path.exists():
            return None
        state: dict[str, Any] = torch.load(self.path, map_location="cpu", weights_only=False)
        if state.get("config") != self.config or state.get("n_images") != self.n_images:
            raise InvalidInput(
                f"checkpoint {self.path} was written by a different run (config or image count differ); "
                "delete it or pass another checkpoint path"
            )
        return state

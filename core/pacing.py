"""Fitting a run to its time budget: probe the method's speed on the images, plan the epochs.

The probe runs the method itself (its real training step, augmentations and per-epoch work such
as MMDC's refinement) for a few one-batch epochs on a random sample of the images, and scales the
time of an epoch to all of them. core/budget.py turns that into the epoch count.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.budget import DEFAULT_CPU_BUDGET_S, Deadline, EpochPlan, fit_epochs
from core.config import MAX_EPOCHS, ClusterConfig
from core.context import RunContext
from core.methods import METHODS
from core.methods.imc_plan import DEFAULT_EPOCHS as IMC_EPOCHS
from core.methods.mmdc_plan import DEFAULT_EPOCHS as MMDC_EPOCHS
from core.result import Progress, ProgressCallback

log = logging.getLogger(__name__)

DEFAULT_EPOCHS = {"mmdc": MMDC_EPOCHS, "imc": IMC_EPOCHS}
PROBE_IMAGES = 256  # one IMC-SwAV batch, two MMDC batches: the run's own batch shapes
# One-batch epochs of the probe: the first pays the warm-up (allocations, oneDNN's kernel
# choices); on CUDA the next three are the eager steps before a step's graph is captured
# (core/graphs.py), so the median of the later epochs is the replay speed.
PROBE_EPOCHS = {"cpu": 3, "cuda": 8}


@dataclass(frozen=True)
class Paced:
    """A run's config with its epochs fitted, and the plan and deadline it was fitted by."""

    config: ClusterConfig
    plan: EpochPlan | None = None  # None: epochs given, or the method's default (GPU, k-means)
    deadline: Deadline | None = None


def budget_of(config: ClusterConfig, device: torch.device) -> tuple[float, int] | None:
    """(seconds, most epochs) to fit the run to, or None when its epochs are already settled."""
    if config.method not in DEFAULT_EPOCHS or config.epochs is not None:  # given epochs win
        return None
    if config.time_budget_s is not None:
        return config.time_budget_s, MAX_EPOCHS
    if device.type == "cpu":  # the default epochs, as far as they fit a CPU's default budget
        return DEFAULT_CPU_BUDGET_S, DEFAULT_EPOCHS[config.method]
    return None


def pace(images: torch.Tensor, config: ClusterConfig, device: torch.device, *, started: float,
         checkpoint: Path | None = None, on_progress: ProgressCallback | None = None) -> Paced:
    """Fit config.epochs to the budget (see budget_of) counted from `started` (perf_counter).

    images: (N, C, S, S) uint8 on `device`. A checkpoint of the same run keeps its epochs, so a
    resumed job continues the schedule it began instead of probing again.
    """
    budget = budget_of(config, device)
    if budget is None:
        return Paced(config)
    budget_s, max_epochs = budget
    epochs = checkpointed_epochs(checkpoint, config)
    if epochs is None:
        if on_progress is not None:
            on_progress(Progress("probe", 0, 0))
        per_epoch = seconds_per_epoch(images, config, device)
        plan = fit_epochs(budget_s, time.perf_counter() - started, per_epoch, max_epochs=max_epochs,
                          what=f"{config.method} on these {images.shape[0]} images")
        log.info("%s: %d epochs of %.2f s fit the %.0f s budget", config.method, plan.epochs, per_epoch, budget_s)
    else:
        plan = EpochPlan(epochs, float("nan"), budget_s, float("nan"))
    return Paced(config.with_(epochs=plan.epochs), plan, Deadline(started + budget_s))


def seconds_per_epoch(images: torch.Tensor, config: ClusterConfig, device: torch.device) -> float:
    """The probe: seconds one epoch over all `images` takes, from one-batch epochs on a sample."""
    n = images.shape[0]
    m = min(n, max(PROBE_IMAGES, config.batch_size or 0, 2 * config.k))
    generator = torch.Generator(device=device).manual_seed(config.seed)  # the run draws from its own
    sample = images[torch.randperm(n, generator=generator, device=device)[:m]]
    epochs = PROBE_EPOCHS.get(device.type, PROBE_EPOCHS["cpu"])
    probe = config.with_(epochs=epochs, time_budget_s=None)
    output = METHODS[config.method](sample, probe, RunContext(device=device, generator=generator))
    lengths = np.diff([0.0] + [record["seconds"] for record in output.history])
    return float(np.median(lengths[1:])) * n / m


def checkpointed_epochs(path: Path | None, config: ClusterConfig) -> int | None:
    """The epochs a checkpoint of this run was planned with (None without one)."""
    if path is None or not path.exists():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=False).get("config") or {}
    same_run = {**saved, "epochs": None} == config.to_dict()
    return int(saved["epochs"]) if same_run and saved.get("epochs") else None

"""Fitting a run to its time budget: probe the method's speed on the images, plan the epochs.

The probe runs the method itself (its real training step at the run's batch size, augmentations
and per-epoch work such as MMDC's refinement) for a few short epochs on a random sample of the
images (a quarter of a small set), and scales the time of an epoch to all of them. core/budget.py turns that into the
epoch count.

On a CPU the probe also tries one thread against torch's default (one per core) and the run keeps
the faster: on the shared 2-core machine (load 4-7) MMDC on the 1,797 digits fitted 28 epochs
into 60 s with one thread and 5 with two (OpenMP's threads spin-wait for each other between the
many small kernels of a small network; bench/RESULTS.md, "Small sets"). Threads change results
in the last bits, which only budgeted runs may (their epochs depend on timing anyway).

method="auto" (the default) is settled here too, from the plan (choose_method): IMC-SwAV, unless
the run leaves it too few optimiser steps on a grey-scale set, and then MMDC.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.budget import DEFAULT_CPU_BUDGET_S, Deadline, EpochPlan, fit_epochs
from core.config import BOUNDS, ClusterConfig
from core.context import RunContext
from core.errors import InvalidInput
from core.methods import METHODS, imc_plan, mmdc_plan
from core.result import Progress, ProgressCallback
from core.runtime import cpu_threads

log = logging.getLogger(__name__)

DEFAULT_EPOCHS = {"mmdc": mmdc_plan.DEFAULT_EPOCHS, "imc": imc_plan.DEFAULT_EPOCHS}
PLANS = {"mmdc": mmdc_plan.make_plan, "imc": imc_plan.make_plan}
# The sample: at least PROBE_IMAGES (one IMC-SwAV batch, two MMDC ones), up to a quarter of the
# set but at most PROBE_MAX, so fixed per-epoch costs (k-means restarts) are not scaled up much
PROBE_IMAGES, PROBE_SHARE, PROBE_MAX = 256, 4, 2048
# Epochs of the probe: the first pays the warm-up (allocations, oneDNN's kernel choices); on
# CUDA the next three are the eager steps before a step's graph is captured (core/graphs.py).
# The median of the later epochs (three on a CPU) is the estimate: one neighbour's burst does not
# move it (the larger of two fitted 7 IMC-SwAV epochs into 60 s that took 36 s), and the fastest
# planned 86 epochs into 110 s of which the deadline let 74 run (bench/RESULTS.md).
PROBE_EPOCHS = {"cpu": 4, "cuda": 8}
# method="auto": IMC-SwAV wins at equal wall time once it has trained a while (bench/RESULTS.md,
# "Default method") but learns little in its first few hundred steps, where MMDC is already far
# along on grey-scale sets; below this many IMC-SwAV steps a grey-scale run trains MMDC instead
# (bench/RESULTS.md, "Short budgets"; on the digits IMC-SwAV scored 0.41 after 70 steps, 0.887
# after 266 and 0.919 after 350, where MMDC at the same budget scored 0.54, 0.907-0.957 and 0.81).
# Colour sets stay on IMC-SwAV: MMDC starts there from a near-collapse and trailed it at every
# time point measured.
AUTO_MIN_IMC_STEPS = 300
# A probe still running past this share of the budget ends the job as too short (InvalidInput):
# a plan would leave too few epochs to be worth them, and a large colour set's probe alone could
# otherwise outlast the budget before its refusal (bench/RESULTS.md, "CIFAR-10 goal")
PROBE_MAX_BUDGET_SHARE = 0.5


@dataclass(frozen=True)
class Paced:
    """A run's config with its epochs fitted, and the plan and deadline it was fitted by."""

    config: ClusterConfig
    plan: EpochPlan | None = None  # None: epochs given, or the method's default (GPU, k-means)
    deadline: Deadline | None = None
    threads: int | None = None  # torch's CPU threads for the run (None: leave them)


def budget_of(config: ClusterConfig, device: torch.device) -> tuple[float, int] | None:
    """(seconds, most epochs) to fit the run to, or None when its epochs are already settled."""
    if config.method not in (*DEFAULT_EPOCHS, "auto") or config.epochs is not None:  # given epochs win
        return None
    if config.time_budget_s is not None:
        return config.time_budget_s, BOUNDS["epochs"][1]
    if device.type == "cpu":  # the default epochs, as far as they fit a CPU's default budget
        return DEFAULT_CPU_BUDGET_S, DEFAULT_EPOCHS.get(config.method, imc_plan.DEFAULT_EPOCHS)
    return None


def pace(images: torch.Tensor, config: ClusterConfig, device: torch.device, *, started: float,
         checkpoint: Path | None = None, on_progress: ProgressCallback | None = None,
         recorded: ClusterConfig | None = None) -> Paced:
    """Settle method="auto" and fit config.epochs to the budget (see budget_of) counted from
    `started` (perf_counter).

    images: (N, C, S, S) uint8 on `device`. A checkpoint of the same run keeps its method and
    epochs, so a resumed job continues the schedule it began instead of probing again.
    recorded: the config as the checkpoint records the run, when it is not `config` (k None
    for a k chosen later).
    """
    saved = checkpointed(checkpoint, recorded or config)
    budget = None if saved is None else budget_of(config.with_(method=saved[0]), device)
    if saved is not None and budget is not None:
        method, epochs = saved
        plan = EpochPlan(epochs, float("nan"), budget[0], float("nan"))
        return Paced(config.with_(method=method, epochs=epochs), plan, Deadline(started + budget[0]))
    if config.method == "auto":
        return choose_method(images, config, device, started=started, on_progress=on_progress)
    return fit(images, config, device, started=started, on_progress=on_progress)


def fit(images: torch.Tensor, config: ClusterConfig, device: torch.device, *, started: float,
        on_progress: ProgressCallback | None = None) -> Paced:
    """config (a method's own, not "auto") with its epochs fitted to the budget, from a probe."""
    budget = budget_of(config, device)
    if budget is None:
        return Paced(config)
    budget_s, max_epochs = budget
    if on_progress is not None:
        on_progress(Progress("probe", 0, 0, method=config.method))
    per_epoch, threads = probe(images, config, device, budget_s=budget_s, started=started)
    plan = fit_epochs(budget_s, time.perf_counter() - started, per_epoch, max_epochs=max_epochs,
                      what=f"{config.method} on these {images.shape[0]} images")
    log.info("%s: %d epochs of %.2f s (%s threads) fit the %.0f s budget", config.method, plan.epochs,
             per_epoch, threads, budget_s)
    return Paced(config.with_(epochs=plan.epochs), plan, Deadline(started + budget_s), threads)


def choose_method(images: torch.Tensor, config: ClusterConfig, device: torch.device, *, started: float,
                  on_progress: ProgressCallback | None = None) -> Paced:
    """method="auto": IMC-SwAV's plan, or MMDC's where IMC-SwAV's plan on a grey-scale set has
    fewer than AUTO_MIN_IMC_STEPS optimiser steps (or not one epoch fits its budget)."""
    imc, mmdc = config.with_(method="imc"), config.with_(method="mmdc")
    n, channels, size = images.shape[0], images.shape[1], images.shape[-1]
    if channels == 3:
        return fit(images, imc, device, started=started, on_progress=on_progress)

    def steps(epochs: int) -> int:
        return epochs * imc_plan.make_plan(imc.with_(epochs=epochs), n, channels, size).steps_per_epoch

    budget = budget_of(imc, device)
    if budget is None:  # epochs given, or a GPU's default: no probe needed
        return Paced(imc if steps(config.epochs or imc_plan.DEFAULT_EPOCHS) >= AUTO_MIN_IMC_STEPS else mmdc)
    # A glance at IMC-SwAV's step decides: the full probe of the method not taken would cost a
    # short budget a third of its epochs (bench/RESULTS.md). It compares thread counts as the
    # full probe does: one thread alone read 2x slow where two ran faster ("Short budgets").
    if on_progress is not None:
        on_progress(Progress("probe", 0, 0, method="imc"))
    glance, _ = probe(images, imc, device, budget_s=budget[0], started=started, glance=True)
    try:
        epochs = fit_epochs(budget[0], time.perf_counter() - started, glance, max_epochs=budget[1]).epochs
    except InvalidInput:  # not one IMC-SwAV epoch would fit; MMDC's are cheaper
        epochs = 0
    chosen = imc if steps(epochs) >= AUTO_MIN_IMC_STEPS else mmdc
    return fit(images, chosen, device, started=started, on_progress=on_progress)


def probe(images: torch.Tensor, config: ClusterConfig, device: torch.device, *, budget_s: float,
          started: float, glance: bool = False) -> tuple[float, int | None]:
    """fastest_threads within PROBE_MAX_BUDGET_SHARE of the budget counted from `started`, else
    InvalidInput."""
    try:
        return fastest_threads(images, config, device, glance=glance,
                               give_up_at=started + budget_s * PROBE_MAX_BUDGET_SHARE)
    except ProbeGaveUp:
        raise InvalidInput(
            f"time_budget_s={budget_s:g} is too short: measuring the speed of {config.method} on these "
            f"{images.shape[0]} images took more than {PROBE_MAX_BUDGET_SHARE:.0%} of it; give a longer "
            "budget or set epochs") from None


def fastest_threads(images: torch.Tensor, config: ClusterConfig, device: torch.device, *,
                    glance: bool = False, give_up_at: float | None = None) -> tuple[float, int | None]:
    """(seconds per epoch, threads) of the faster of one CPU thread and torch's default; one is
    probed first, so the default's probe gives up once it is slower (None threads off the CPU).
    glance: each probe is seconds_per_epoch's glance. give_up_at: a perf_counter time past which
    the first probe raises ProbeGaveUp."""
    if device.type != "cpu":
        return seconds_per_epoch(images, config, device, glance=glance, give_up_after=give_up_at), None
    default, began = torch.get_num_threads(), time.perf_counter()
    with cpu_threads(1):
        best, threads = seconds_per_epoch(images, config, device, glance=glance, give_up_after=give_up_at), 1
    if default > 1:
        probed = time.perf_counter()
        slower = 2 * probed - began
        with cpu_threads(default):
            try:
                seconds = seconds_per_epoch(images, config, device, glance=glance,
                                            give_up_after=slower if give_up_at is None else min(slower, give_up_at))
            except ProbeGaveUp:
                seconds = float("inf")
        if seconds < best:
            best, threads = seconds, default
    return best, threads


class ProbeGaveUp(Exception):
    """Raised from a probe's progress callback: it is already slower than the one to beat."""


def seconds_per_epoch(images: torch.Tensor, config: ClusterConfig, device: torch.device, *,
                      give_up_after: float | None = None, glance: bool = False) -> float:
    """The probe: seconds one epoch over all `images` takes, from short epochs on a sample of them.

    give_up_after: a perf_counter time past which the probe raises ProbeGaveUp (at a report).
    glance: two epochs of one batch, the second timed: a rough figure at a fraction of the cost.
    """
    n, channels, size = images.shape[0], images.shape[1], images.shape[-1]
    batch = PLANS[config.method](config, n, channels, size).batch_size  # the run's, not the sample's
    m = min(n, max(batch, 2 * config.k) if glance else
            max(PROBE_IMAGES, batch, 2 * config.k, min(n // PROBE_SHARE, PROBE_MAX)))
    generator = torch.Generator(device=device).manual_seed(config.seed)  # the run draws from its own
    sample = images[torch.randperm(n, generator=generator, device=device)[:m]]
    epochs = 2 if glance else PROBE_EPOCHS.get(device.type, PROBE_EPOCHS["cpu"])
    probe = config.with_(epochs=epochs, time_budget_s=None, batch_size=batch)

    def give_up(_: Progress) -> None:
        if give_up_after is not None and time.perf_counter() > give_up_after:
            raise ProbeGaveUp

    output = METHODS[config.method](sample, probe, RunContext(device=device, generator=generator, on_progress=give_up))
    lengths = np.diff([0.0] + [record["seconds"] for record in output.history])
    return float(np.median(lengths[1:])) * n / m


def checkpointed(path: Path | None, config: ClusterConfig) -> tuple[str, int] | None:
    """(method, epochs) a budgeted checkpoint of this run was planned with (None without one); a
    method="auto" run's checkpoint holds the method it settled on."""
    if path is None or not path.exists():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=False).get("config") or {}
    method = saved.get("method")
    same_method = method == config.method or (config.method == "auto" and method in DEFAULT_EPOCHS)
    same_run = same_method and {**saved, "epochs": None, "method": config.method} == config.to_dict()
    return (method, int(saved["epochs"])) if same_run and saved.get("epochs") else None

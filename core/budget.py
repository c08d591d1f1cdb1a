"""Time budgets: a job says how long it may train, and this fits its epochs to that (pure, no torch).

Every method declares its schedule in fractions of its epochs (MMDC's refinement start and
learning-rate decay, IMC-SwAV's milestones and warm-up share), so choosing only the epoch count
keeps each schedule's shape, as `bench/gpu_runs.sh fit` does. The speed comes from a probe of the
method's real training step on the real images (core/probe.py); `Deadline` then stops a run that
goes over anyway (a loaded machine) at an epoch end, so it ends within the budget plus the read-out.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from core.errors import InvalidInput

# The share of the budget left after the probe that the epochs are planned to fill: the rest
# absorbs the noise of a shared machine (the probe times two steps, a run times thousands) and
# the last epoch the deadline may still let start.
SAFETY = 0.9
# With neither epochs nor a budget, a CPU job plans for this long (at most the method's default
# epochs). Ten minutes is what the digits take with IMC-SwAV's 50 default epochs on a 2-core CPU
# (issue 16: 638 s) and about the longest a first-time user waits; 50 epochs of 70,000 MNIST
# images would take hours there. On a GPU the default epochs stand (minutes even for 70k images).
DEFAULT_CPU_BUDGET_S = 600.0

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|m|min|h)?\s*", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """Seconds in "600", "90s", "10m", "1.5h"; anything else raises naming the accepted forms."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise InvalidInput(f"time {text!r} is not a duration; write seconds (600) or 90s, 10m, 1h")
    return float(match.group(1)) * _UNITS[(match.group(2) or "").lower()]


def format_duration(seconds: float) -> str:
    """90 -> "90 s", 600 -> "10.0 min": what progress lines print."""
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"


@dataclass(frozen=True)
class EpochPlan:
    """How many epochs fit the budget, and what that was worked out from."""

    epochs: int
    seconds_per_epoch: float  # measured by the probe, for all the run's images
    budget_s: float  # from the start of clustering; the read-out comes on top
    expected_s: float  # time spent before the first epoch + the planned epochs

    def metrics(self) -> dict[str, float]:
        """The plan as progress metrics (the job's progress JSON shows them)."""
        return {"time_budget_s": self.budget_s, "seconds_per_epoch": self.seconds_per_epoch,
                "expected_train_s": self.expected_s}


def fit_epochs(budget_s: float, spent_s: float, seconds_per_epoch: float, *, max_epochs: int,
               what: str = "the images") -> EpochPlan:
    """The most epochs (<= max_epochs) that fill SAFETY of the budget left after `spent_s`.

    Raises InvalidInput when not even one epoch fits, naming the budget that would.
    """
    if seconds_per_epoch <= 0 or not math.isfinite(seconds_per_epoch):
        raise ValueError(f"seconds_per_epoch={seconds_per_epoch} must be a positive number")
    epochs = min(max_epochs, math.floor((budget_s - spent_s) * SAFETY / seconds_per_epoch))
    if epochs < 1:
        needed = math.ceil(spent_s + seconds_per_epoch / SAFETY) + 1
        raise InvalidInput(
            f"time_budget_s={budget_s:g} is too short: one epoch of {what} takes about "
            f"{seconds_per_epoch:.1f} s here after {spent_s:.1f} s of setup; give at least {needed} s "
            "or set epochs")
    return EpochPlan(epochs, seconds_per_epoch, budget_s, spent_s + epochs * seconds_per_epoch)


@dataclass
class Deadline:
    """Whether another epoch still fits before `at` (a `clock()` time), judged by the epochs so far.

    Call `room_for_epoch()` before each epoch: the time between calls is an epoch's length.
    """

    at: float
    clock: Callable[[], float] = time.perf_counter
    _previous: float | None = field(default=None, repr=False)
    _epochs: list[float] = field(default_factory=list, repr=False)

    def room_for_epoch(self) -> bool:
        now = self.clock()
        if self._previous is not None:
            self._epochs.append(now - self._previous)
        self._previous = now
        # the median ignores the first epoch's warm-up once there are three
        typical = sorted(self._epochs)[len(self._epochs) // 2] if self._epochs else 0.0
        return now + typical <= self.at

    def left_s(self) -> float:
        return self.at - self.clock()

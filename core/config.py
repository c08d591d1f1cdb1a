"""Typed parameters of a clustering run; importable without torch (the API validates with it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal, get_args

from core.errors import InvalidInput

Method = Literal["auto", "imc", "mmdc", "kmeans"]  # the default first (the UI's pre-selection)
Backbone = Literal["auto", "resnet18", "vgg"]
DeviceName = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16"]

# "auto" trains IMC-SwAV or MMDC, chosen per run from the run's plan (core/pacing.py, choose_method;
# bench/RESULTS.md, "Default method"); the result's config names the one that ran.
DEFAULT_METHOD: Method = "auto"
METHOD_NAMES: tuple[str, ...] = get_args(Method)
PRECISIONS: tuple[str, ...] = get_args(Precision)
BACKBONES: tuple[str, ...] = get_args(Backbone)
MAX_K = 1000
# Inclusive bounds of the integer parameters a caller sets; the API's JobParams declares its
# fields from this table, so a request and a library call are refused alike.
BOUNDS: dict[str, tuple[int, int]] = {
    "k": (2, MAX_K),
    "k_max": (2, MAX_K),  # the largest k tried when k is chosen; a run caps it at its image count
    "epochs": (1, 10_000),
    "seed": (0, 2**31 - 1),
    "batch_size": (2, 8192),
    "image_size": (16, 256),
    # seconds: room for setup, the speed probe and an epoch; a week is beyond any job here
    "time_budget_s": (10, 7 * 24 * 3600),
}


@dataclass(frozen=True)
class MMDCParams:
    """MMDC hyperparameters (algorithms.md §1.10); defaults follow the reference MNIST/CIFAR runs."""

    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4  # applied only to tensors with >= 2 dims
    sigma: float = 0.0  # GMM spread on the sphere; 0 = the reference default (one-hot targets)
    means: Literal["one_hot", "random"] = "one_hot"
    # Fractions of `epochs`, so short runs keep the reference shape. None = the reference's for the
    # image type: grey-scale as MNIST (refine 20/50, ×0.1 at 40/50), colour as CIFAR-10 (refine
    # 350/400, ×0.2 at 300/400), see core/methods/mmdc_plan.py.
    refine_start: float | None = None
    lr_decay_at: float | None = None
    lr_decay_gamma: float | None = None
    rotation: bool | None = None  # None = on for the ResNet backbone, off for the small VGG
    # Training crop sides as fractions of the image's; the first is also the centre view (the
    # Hungarian's, the read-out's). None = the reference's for the image type: 24/20/16 of 28 for
    # grey-scale sets (MNIST), one crop of 20/32 for colour ones (CIFAR-10), see core/methods/mmdc_plan.py
    crop_fractions: tuple[float, ...] | None = None
    flip: bool | None = None  # None = on for colour images
    color_jitter: bool | None = None  # None = on for colour images
    rotate_degrees: float | None = None  # None = 25 for grey-scale images, 0 for colour
    kmeans_restarts: int = 10  # as sklearn k_means, which the reference calls (n_init=10)


@dataclass(frozen=True)
class IMCParams:
    """IMC-SwAV hyperparameters (algorithms.md §2)."""

    # None = per image type: the reference's 5e-4 for colour sets (its CIFAR recipe, 500 epochs),
    # 2e-3 for grey-scale ones, where the shipped 50-epoch schedule learns far faster with it
    # (bench/RESULTS.md, "IMC-SwAV learning rate").
    lr: float | None = None
    betas: tuple[float, float] = (0.8, 0.999)
    weight_decay: float = 1e-5  # coupled L2, as the reference (not AdamW)
    warmup_iters: int = 500
    freeze_prototypes_iters: int = 500
    lr_milestones: tuple[float, ...] = (0.3, 0.6, 0.8)  # fractions of `epochs` (150/300/400 of 500)
    lr_gamma: float = 0.4
    prototypes: int | None = None  # None = min(1000, max(10 k, N / 10)), see core/methods/imc_plan.py
    project_dim: int = 128
    epsilon: float = 0.05
    sinkhorn_iters: int = 3
    temperature: float = 0.1
    beta: float = 4.0
    high_crop: float = 0.875  # fraction of the working size (CIFAR 28 of 32)
    low_crop: float = 0.5625  # (CIFAR 18 of 32)
    n_high: int = 2
    n_low: int = 4
    # RandomResizedCrop area fractions and flip; None = the reference's (0.2, 1) / (0.08, 0.4) and
    # flips for colour images, (0.4, 1) / (0.2, 0.6) without flips for grey-scale ones (a digit's
    # fragment or mirror image is another glyph; bench/RESULTS.md measures it)
    high_scale: tuple[float, float] | None = None
    low_scale: tuple[float, float] | None = None
    flip: bool | None = None


@dataclass(frozen=True)
class ClusterConfig:
    """Everything that determines a run's result, given the images and the seed."""

    # None = train once, then choose k in 2..k_max on the trained representation (core/kselect.py)
    k: int | None = None
    method: Method = DEFAULT_METHOD
    epochs: int | None = None  # None = fitted to time_budget_s, else the method's default (core/budget.py)
    # Seconds the job may train (probe included; the read-out comes on top). The epochs are
    # fitted to it from a probe of the method's speed on the images; given epochs win over it.
    time_budget_s: float | None = None
    seed: int = 0
    batch_size: int | None = None  # None = 128 for MMDC, 256 for IMC (capped at N)
    image_size: int | None = None  # working size; None = taken from the images
    backbone: Backbone = "auto"
    # auto = bf16 autocast on CUDA and on CPUs with native bf16 (core.runtime.resolve_precision), else fp32
    precision: Precision = "auto"
    mmdc: MMDCParams = field(default_factory=MMDCParams)
    imc: IMCParams = field(default_factory=IMCParams)
    # Only read when k is None. Capped at the image count rather than refused (k_max_for), so the
    # default 50 works for any set; an explicit k above the image count is still refused.
    k_max: int = 50

    def validate(self, n_images: int | None = None) -> None:
        """Raise InvalidInput naming the parameter and the fix."""
        if self.method not in METHOD_NAMES:
            raise InvalidInput(f"method={self.method!r} is unknown; use one of {', '.join(METHOD_NAMES)}")
        for name, (low, high) in BOUNDS.items():
            value = getattr(self, name)
            if value is not None and not low <= value <= high:  # NaN fails too
                raise InvalidInput(f"{name}={value} is out of range; use {low} <= {name} <= {high}")
        if n_images is not None and self.k is not None and self.k > n_images:
            raise InvalidInput(f"k={self.k} exceeds the {n_images} images given; lower k")
        if self.precision not in PRECISIONS:
            raise InvalidInput(f"precision={self.precision!r} is unknown; use one of {', '.join(PRECISIONS)}")

    def k_max_for(self, n_images: int) -> int:
        """The largest k tried for `n_images` images: k_max, capped at the image count."""
        return min(self.k_max, n_images)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClusterConfig:
        """Inverse of to_dict; unknown keys raise so a typo never silently changes a run."""
        data = dict(data)
        mmdc = _params_from(MMDCParams, data.pop("mmdc", None))
        imc = _params_from(IMCParams, data.pop("imc", None))
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InvalidInput(f"unknown config field(s): {', '.join(sorted(unknown))}")
        return cls(**data, mmdc=mmdc, imc=imc)

    def with_(self, **changes: Any) -> ClusterConfig:
        return replace(self, **changes)


def _params_from(kind: type, data: dict[str, Any] | None) -> Any:
    if not data:
        return kind()
    tuples = {f.name for f in fields(kind) if str(f.type).startswith("tuple")}
    return kind(**{key: tuple(v) if key in tuples and v is not None else v for key, v in data.items()})

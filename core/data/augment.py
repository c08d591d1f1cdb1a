"""Batched image augmentation as tensor ops on the training device (no PIL, no per-image Python).

Geometry (crop, resize, flip, small rotation) is one affine warp per image: a single
`grid_sample` call takes the whole batch. Inputs are uint8 (B, C, S, S); outputs float in [0, 1].
Every random draw comes from the caller's generator, so a run is reproducible from its seed.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale
LUMA = (0.299, 0.587, 0.114)
TO_YIQ = (LUMA, (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


@functools.cache
def yiq_inverse() -> tuple[tuple[float, ...], ...]:
    """The inverse of TO_YIQ, computed once on first use: no torch work at import time (a worker
    process imports this module and must not start thread pools it might later fork)."""
    inverse = torch.linalg.inv(torch.tensor(TO_YIQ, dtype=torch.float64))
    return tuple(tuple(row) for row in inverse.tolist())


@dataclass(frozen=True)
class Jitter:
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.125
    p: float = 1.0  # probability that an image is jittered at all


@functools.lru_cache(maxsize=32)
def constant(values: tuple[float, ...] | tuple[tuple[float, ...], ...], device: torch.device,
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A small constant table on `device`, made once per device and dtype. Made on every call it
    would be a copy from host memory, which on CUDA waits for the GPU to drain its queue: the
    host could no longer run ahead of the GPU (issue 7: no host sync per step)."""
    with torch.inference_mode(False):  # a cached inference tensor would refuse later autograd use
        return torch.tensor(values, device=device, dtype=dtype)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float in [0, 1] (MMDC uses no mean/std normalisation)."""
    return images.float().div_(255.0)


def _uniform(n: int, low: float, high: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (high - low) + low


def warp(
    images: torch.Tensor,
    out_size: int,
    *,
    scale_x: torch.Tensor,
    scale_y: torch.Tensor,
    centre_x: torch.Tensor,
    centre_y: torch.Tensor,
    angle: torch.Tensor | None = None,
    flip: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample an axis-aligned crop (sizes and centres in normalised [-1, 1] units) resized to
    out_size, from the image flipped and rotated about its centre. All per-image tensors (B,)."""
    batch = images.shape[0]
    cos = torch.cos(angle) if angle is not None else torch.ones_like(scale_x)
    sin = torch.sin(angle) if angle is not None else torch.zeros_like(scale_x)
    mirror = 1.0 - 2.0 * flip.float() if flip is not None else torch.ones_like(scale_x)
    # input point = Flip · Rot · (diag(sx, sy) · u + c): rows of the 2x3 matrix per image
    theta = torch.stack(
        [
            torch.stack([mirror * cos * scale_x, -mirror * sin * scale_y,
                         mirror * (cos * centre_x - sin * centre_y)], 1),
            torch.stack([sin * scale_x, cos * scale_y, sin * centre_x + cos * centre_y], 1),
        ],
        1,
    )  # (B, 2, 3)
    source = to_unit(images) if images.dtype == torch.uint8 else images
    grid = F.affine_grid(theta.to(source.dtype), [batch, images.shape[1], out_size, out_size], align_corners=False)
    return F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_crops(
    images: torch.Tensor,
    out_size: int,
    g: torch.Generator,
    *,
    crop_fractions: tuple[float, ...],
    flip: bool = False,
    max_degrees: float = 0.0,
) -> torch.Tensor:
    """MMDC's training geometry: square crop of a size drawn from crop_fractions, at a uniform
    random position, resized to out_size; optional horizontal flip and rotation in ±max_degrees."""
    batch, device = images.shape[0], images.device
    choice = torch.randint(len(crop_fractions), (batch,), generator=g, device=device)
    fraction = constant(tuple(crop_fractions), device)[choice]
    centre_x = (torch.rand(batch, generator=g, device=device) * 2 - 1) * (1 - fraction)
    centre_y = (torch.rand(batch, generator=g, device=device) * 2 - 1) * (1 - fraction)
    flips = torch.rand(batch, generator=g, device=device) < 0.5 if flip else None
    angle = None
    if max_degrees > 0:
        angle = _uniform(batch, -max_degrees, max_degrees, g, device) * (math.pi / 180)
    return warp(images, out_size, scale_x=fraction, scale_y=fraction, centre_x=centre_x,
                centre_y=centre_y, angle=angle, flip=flips)


def random_resized_crops(
    images: torch.Tensor,
    out_size: int,
    g: torch.Generator,
    *,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
) -> torch.Tensor:
    """torchvision's RandomResizedCrop, batched: area fraction in `scale`, log-uniform aspect."""
    batch, device = images.shape[0], images.device
    area = _uniform(batch, *scale, g, device)
    log_ratio = _uniform(batch, math.log(ratio[0]), math.log(ratio[1]), g, device)
    aspect = torch.exp(log_ratio)
    width = torch.sqrt(area * aspect).clamp(max=1.0)
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    centre_x = (torch.rand(batch, generator=g, device=device) * 2 - 1) * (1 - width)
    centre_y = (torch.rand(batch, generator=g, device=device) * 2 - 1) * (1 - height)
    flips = torch.rand(batch, generator=g, device=device) < 0.5 if flip else None
    return warp(images, out_size, scale_x=width, scale_y=height, centre_x=centre_x,
                centre_y=centre_y, flip=flips)


def centre_crops(images: torch.Tensor, out_size: int, fraction: float) -> torch.Tensor:
    """The deterministic inference view: centre crop of `fraction` of the side, resized."""
    batch, device = images.shape[0], images.device
    full = torch.full((batch,), float(fraction), device=device)
    zero = torch.zeros(batch, device=device)
    if fraction == 1.0 and images.shape[-1] == out_size:
        return to_unit(images) if images.dtype == torch.uint8 else images
    return warp(images, out_size, scale_x=full, scale_y=full, centre_x=zero, centre_y=zero)


def grey(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma."""
    r, g_, b = x.unbind(1)
    return (LUMA[0] * r + LUMA[1] * g_ + LUMA[2] * b).unsqueeze(1)


def color_jitter(x: torch.Tensor, g: torch.Generator, jitter: Jitter = Jitter()) -> torch.Tensor:
    """Brightness, contrast, saturation and hue factors drawn per image, applied in that fixed
    order (torchvision shuffles the order per call). Hue is a rotation of the chroma plane in
    YIQ space, a close and cheap stand-in for the HSV hue shift. 1-channel images get brightness
    and contrast only."""
    batch, device = x.shape[0], x.device
    apply = (torch.rand(batch, generator=g, device=device) < jitter.p).float().view(-1, 1, 1, 1)
    original = x

    def factor(strength: float) -> torch.Tensor:
        return _uniform(batch, max(0.0, 1 - strength), 1 + strength, g, device).view(-1, 1, 1, 1)

    x = (x * factor(jitter.brightness)).clamp_(0, 1)
    luma = grey(x) if x.shape[1] == 3 else x
    mean = luma.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * factor(jitter.contrast) + mean).clamp_(0, 1)
    if x.shape[1] == 3:
        luma = grey(x)
        x = ((x - luma) * factor(jitter.saturation) + luma).clamp_(0, 1)
        x = _hue_rotate(x, _uniform(batch, -jitter.hue, jitter.hue, g, device) * 2 * math.pi)
    return apply * x + (1 - apply) * original


def _hue_rotate(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    to_yiq, from_yiq = constant(TO_YIQ, x.device, x.dtype), constant(yiq_inverse(), x.device, x.dtype)
    cos, sin = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(cos), torch.zeros_like(cos)
    rotation = torch.stack([torch.stack([one, zero, zero], 1), torch.stack([zero, cos, -sin], 1),
                            torch.stack([zero, sin, cos], 1)], 1)  # (B, 3, 3)
    matrix = from_yiq @ rotation @ to_yiq  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", matrix, x).clamp_(0, 1)


def random_grayscale(x: torch.Tensor, g: torch.Generator, p: float) -> torch.Tensor:
    if x.shape[1] != 3 or p <= 0:
        return x
    pick = (torch.rand(x.shape[0], generator=g, device=x.device) < p).view(-1, 1, 1, 1)
    return torch.where(pick, grey(x).expand_as(x), x)


def rotations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 4-way rotation task: (4B, C, H, W) views at 0/90/180/270 degrees and labels 0..3."""
    views = torch.cat([torch.rot90(x, turns, dims=(2, 3)) for turns in range(4)])
    labels = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])
    return views, labels


def normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-channel standardisation; mean and std are (C,) tensors."""
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)

"""Device execution details shared by the methods: precision, memory format, batched inference."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn


def pick_device(requested: str | torch.device | None) -> torch.device:
    """CUDA when present unless the caller says otherwise."""
    if requested is None or str(requested) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but no CUDA device is available; use cpu or auto")
    return device


def autocast(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager[None]:
    """bf16 mixed precision on CUDA, exact fp32 on CPU, unless `precision` says otherwise."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    # channels-last is 1.3-1.6x faster for these convnets on CPU too (performance.md §2c)
    return model.to(device=device, memory_format=torch.channels_last)


def channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


@torch.no_grad()
def infer(
    model: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    view: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    batch_size: int = 1024,
    precision: str = "auto",
) -> torch.Tensor:
    """Apply `model(view(batch))` over all images in eval mode; float32 outputs (N, ...)."""
    modules = [m for m in getattr(model, "modules", lambda: [])() if isinstance(m, nn.Module)]
    was_training = [m.training for m in modules]
    for module in modules:
        module.eval()
    outputs = []
    with autocast(device, precision):
        for part in batches(images.shape[0], batch_size):
            outputs.append(model(channels_last(view(images[part]))).float())
    for module, training in zip(modules, was_training, strict=True):
        module.train(training)
    return torch.cat(outputs)


def sgd_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """Weight decay only on tensors with >= 2 dims: no decay on BN parameters or biases."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]

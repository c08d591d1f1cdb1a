"""Device execution details shared by the methods: precision, memory format, batched inference."""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from core.errors import InvalidInput

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def pick_device(requested: str | torch.device | None) -> torch.device:
    """CUDA when present unless the caller says otherwise."""
    if requested is None or str(requested) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInput("device='cuda' was requested but no CUDA device is available; use cpu or auto")
    return device


@functools.cache
def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): bf16 autocast is then about
    1.8x faster than fp32 for our convnets (bench/RESULTS.md); elsewhere it is emulated and slow."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: stay with fp32
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", cpuinfo) is not None


def resolve_precision(device: torch.device, precision: str = "auto") -> str:
    """"auto" -> bf16 on GPUs and CPUs that compute it natively, else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and native_bf16_cpu() else "fp32"


def autocast(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager[None]:
    """bf16 mixed precision where `resolve_precision` says so, else exact fp32."""
    if resolve_precision(device, precision) == "bf16":
        # no weight-cast cache: a cache filled while a CUDA graph is captured outlives the capture
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


@contextlib.contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op CPU threads set to `threads` inside, restored after (None: unchanged)."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def configure_backend(device: torch.device) -> None:
    """On CUDA, let cuDNN pick the fastest kernels for our fixed shapes and allow TF32 matmuls."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


class HostCopy:
    """A device-to-host copy in flight: the GPU keeps working until `wait()` needs the values."""

    def __init__(self, tensor: torch.Tensor):
        if tensor.is_cuda:
            self.host = tensor.to("cpu", non_blocking=True)  # lands in pinned memory
            self.event: torch.cuda.Event | None = torch.cuda.Event()
            self.event.record()
        else:
            self.host, self.event = tensor, None

    def wait(self) -> torch.Tensor:
        if self.event is not None:
            self.event.synchronize()
        return self.host


def upload(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array onto the device without a stall: on CUDA through pinned memory and an
    asynchronous copy. A copy from ordinary (pageable) memory would first wait for every queued
    kernel, so the host could not run ahead of the GPU."""
    tensor = torch.from_numpy(array)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def check_finite(total: torch.Tensor, what: str, epoch: int) -> None:
    """One host sync per epoch instead of one per step: a NaN/inf anywhere poisons the sum."""
    if not torch.isfinite(total).all():
        raise FloatingPointError(f"{what} loss became non-finite during epoch {epoch}")


def prepare_model(model: ModuleT, device: torch.device) -> ModuleT:
    # channels-last is 1.3-1.6x faster for these convnets on CPU too (ResNet-18 on the 2-core
    # development CPU: 83-86 img/s against 51-64 in NCHW)
    return model.to(device=device, memory_format=torch.channels_last)


def compile_if_requested(module: nn.Module) -> nn.Module:
    """Compile in place when CORRAL_TORCH_COMPILE names a torch.compile mode ("default",
    "reduce-overhead", ...). Off by default: it pays only on GPUs, after a compile of tens of
    seconds (bench/RESULTS.md); state_dict keys stay those of the eager module."""
    mode = os.environ.get("CORRAL_TORCH_COMPILE", "").strip()
    if mode:
        module.compile(mode=None if mode == "default" else mode)
    return module


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
    *,
    precision: str,  # the run's own: the saved predictor repeats it, so labels reproduce
    batch_size: int = 1024,
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

"""Training FLOPs per epoch and the share of the accelerator's bf16 peak they represent.

FLOPs are counted by torch's FlopCounterMode on one forward of the method's own network at its
input sizes (2 FLOP per multiply-add); a training image costs 3 forwards (forward + backward),
the usual approximation, which torch's FlopCounter confirms for ResNet-18 (1.111 vs 3.33 GFLOP).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from core.config import ClusterConfig
from core.methods import imc, imc_plan, mmdc_plan
from core.models.backbones import build_backbone

# Dense bf16 tensor-core peaks from the vendor's data sheets (FLOP/s, without sparsity)
BF16_PEAKS = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12}


def forward_flops(module: nn.Module, channels: int, size: int) -> int:
    """FLOPs of one image's forward pass through `module` (eval mode, on the CPU)."""
    module = module.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(torch.zeros(2, channels, size, size))
    return counter.get_total_flops() // 2


def epoch_flops(config: ClusterConfig, n: int, channels: int, size: int, *, refining: bool = False) -> dict[str, float]:
    """Training FLOPs of one epoch of `config.method` on n images (what the step computes)."""
    if config.method == "mmdc":
        plan = mmdc_plan.make_plan(config, n, channels, size)
        forward = forward_flops(build_backbone(plan.backbone, channels, size, stem_pool="mmdc"), channels, size)
        clustering = n * 3 * forward + n * forward  # train step + the eval forward for the Hungarian / k-means
        rotation = 4 * n * 3 * forward if plan.rotation else 0
        return {"forward_flops_per_image": forward, "epoch_flops": float(clustering + rotation)}
    if config.method == "imc":
        plan = imc_plan.make_plan(config, n, channels, size)
        encoder, _ = imc.build_encoder(plan.backbone, channels, size)
        high, low = forward_flops(encoder, channels, plan.high_size), forward_flops(encoder, channels, plan.low_size)
        per_image = 3 * (config.imc.n_high * high + config.imc.n_low * low)
        trained = plan.steps_per_epoch * plan.batch_size
        return {"forward_flops_per_image": high, "epoch_flops": float(trained * per_image)}
    return {"epoch_flops": 0.0}


def bf16_peak(device_name: str) -> float | None:
    """The dense bf16 peak of a known accelerator, else None (the fraction is then not reported)."""
    for name, peak in BF16_PEAKS.items():  # "H100 PCIe" before "H100"
        if name in device_name:
            return peak
    return None

"""Training-step throughput against a bare forward+backward of the same network and batch size.

    python -m bench.throughput --channels 1 --size 32 --k 10 --batch-size 128 --out bench/results/throughput-vgg.json

With CORRAL_TORCH_COMPILE set, MMDC's backbone is compiled (see core/runtime.py).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.flops import bf16_peak, forward_flops
from core.config import ClusterConfig
from core.context import RunContext
from core.methods import mmdc
from core.methods.mmdc_plan import make_plan
from core.models.backbones import build_backbone
from core.runtime import autocast, channels_last, configure_backend, pick_device


def bare_step_rate(state: mmdc.MMDCState, precision: str, batch: torch.Tensor, steps: int) -> float:
    """fwd+bwd+SGD step on already-prepared float inputs: no augmentation, no assignment."""
    x = channels_last(batch.float() / 255)
    target = state.targets[: batch.shape[0]]
    for i in range(steps + 3):
        if i == 3:
            _sync(batch.device)
            started = time.perf_counter()
        with autocast(batch.device, precision):
            loss = F.mse_loss(state.model(x).float(), target)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
    _sync(batch.device)
    return batch.shape[0] * steps / (time.perf_counter() - started)


def timed(device: torch.device, run: Callable[[], object]) -> float:
    _sync(device)
    started = time.perf_counter()
    run()
    _sync(device)
    return time.perf_counter() - started


def host_syncs(device: torch.device, run: Callable[[], object]) -> int | None:
    """How often `run` made the host wait for the GPU, as torch's sync debug mode counts it. Waits
    on an event (the Hungarian's cost copy) are not counted, nor are they meant to be."""
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--images", type=int, default=2560)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device("auto")
    configure_backend(device)
    images = torch.randint(0, 256, (args.images, args.channels, args.size, args.size), dtype=torch.uint8,
                           device=device)
    config = ClusterConfig(k=args.k, batch_size=args.batch_size, epochs=10, precision=args.precision)
    ctx = RunContext(device=device, generator=torch.Generator(device=device).manual_seed(0))
    plan = make_plan(config, images.shape[0], images.shape[1], images.shape[-1])
    state = mmdc.initial_state(images, config, plan, ctx)
    steps = mmdc.graphed_steps(state, ctx.device, config.precision)

    def clustering(reassign: bool) -> Callable[[], object]:
        return lambda: mmdc.clustering_epoch(images, state, steps, plan, ctx, reassign=reassign)

    def rotation() -> float:
        return mmdc.rotation_epoch(images, state, steps, plan, ctx)

    started = time.perf_counter()
    clustering(reassign=True)()  # warm-up (and compile, when asked)
    if plan.rotation:
        rotation()
    warmup = time.perf_counter() - started
    bare = bare_step_rate(state, config.precision, images[: args.batch_size],
                          steps=max(10, args.images // args.batch_size))
    full = args.images / timed(device, clustering(reassign=True))
    fixed = args.images / timed(device, clustering(reassign=False))
    report: dict[str, object] = {
        "network": plan.backbone, "device": str(device), "batch_size": args.batch_size,
        "input": [args.channels, args.size, args.size], "threads": torch.get_num_threads(),
        "precision": args.precision, "compile": os.environ.get("CORRAL_TORCH_COMPILE", ""),
        "warmup_seconds": warmup, "bare_train_images_per_s": bare, "mmdc_step_images_per_s": full,
        "mmdc_step_without_hungarian_images_per_s": fixed, "ratio": bare / full,
    }
    forward = forward_flops(build_backbone(plan.backbone, args.channels, args.size, stem_pool="mmdc"),
                            args.channels, args.size)
    report["train_gflop_per_image"] = 3 * forward / 1e9
    if plan.rotation:
        report["rotation_step_images_per_s"] = 4 * args.images / timed(device, rotation)
    # per epoch: a few by design (the loss read for progress, the finite check); none per step
    rotation_syncs = host_syncs(device, rotation) if plan.rotation else None
    report |= {"steps_per_epoch": len(mmdc.shuffled_batches(images.shape[0], plan.batch_size, ctx.generator)),
               "host_syncs_per_rotation_epoch": rotation_syncs,
               "host_syncs_per_clustering_epoch": host_syncs(device, clustering(reassign=True))}
    if device.type == "cuda":
        name = torch.cuda.get_device_name()
        peak = bf16_peak(name)
        report |= {"device_name": name, "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 2**30}
        if peak:
            report["bare_fraction_of_bf16_peak"] = bare * 3 * forward / peak
            report["step_fraction_of_bf16_peak"] = full * 4 * forward / peak  # train + Hungarian eval pass
            if plan.rotation:
                report["rotation_fraction_of_bf16_peak"] = report["rotation_step_images_per_s"] * 3 * forward / peak  # type: ignore[operator]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()

"""Training-step throughput against a bare forward+backward of the same network and batch size.

    python -m bench.throughput --channels 1 --size 32 --k 10 --batch-size 128 --out bench/results/throughput-vgg.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from core.config import ClusterConfig
from core.context import RunContext
from core.methods.mmdc import Trainer
from core.runtime import autocast, channels_last, pick_device


def bare_step_rate(trainer: Trainer, batch: torch.Tensor, steps: int) -> float:
    """fwd+bwd+SGD step on already-prepared float inputs: no augmentation, no assignment."""
    x = channels_last(batch.float() / 255)
    target = trainer.targets[: batch.shape[0]]
    for i in range(steps + 1):
        if i == 1:
            started = time.perf_counter()
        with autocast(trainer.ctx.device, trainer.config.precision):
            loss = F.mse_loss(trainer.model(x).float(), target)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()
    _sync(trainer.ctx.device)
    return batch.shape[0] * steps / (time.perf_counter() - started)


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
    images = torch.randint(0, 256, (args.images, args.channels, args.size, args.size), dtype=torch.uint8,
                           device=device)
    config = ClusterConfig(k=args.k, batch_size=args.batch_size, epochs=10, precision=args.precision)
    ctx = RunContext(device=device, generator=torch.Generator(device=device).manual_seed(0))
    trainer = Trainer(images, config, ctx)
    bare = bare_step_rate(trainer, images[: args.batch_size], steps=10)
    trainer.clustering_epoch(reassign=True)  # warm-up
    _, full = trainer.clustering_epoch(reassign=True)
    report = {"network": trainer.plan.backbone, "device": str(device), "batch_size": args.batch_size,
              "input": [args.channels, args.size, args.size], "threads": torch.get_num_threads(),
              "precision": args.precision,
              "bare_train_images_per_s": bare, "mmdc_step_images_per_s": full, "ratio": bare / full}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()

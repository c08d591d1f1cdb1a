"""Run one method on one benchmark set and write a JSON result.

    python -m bench.run --dataset mnist --data ../shared/datasets --method mmdc --epochs 30 \
        --eval-every 2 --out bench/results/mnist-mmdc.json
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.datasets import load
from core import ClusterConfig, cluster
from core.result import Progress


def commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--split", default="all", choices=("all", "train", "test"))
    parser.add_argument("--method", default="mmdc")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=0, help="use only the first N images")
    parser.add_argument("--eval-every", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    if args.threads:
        torch.set_num_threads(args.threads)
    images, labels = load(args.dataset, args.data, args.split)
    if args.limit:
        images, labels = images[: args.limit], labels[: args.limit]
    config = ClusterConfig(k=args.k, method=args.method, epochs=args.epochs, seed=args.seed,
                           batch_size=args.batch_size, precision=args.precision)

    def log_progress(p: Progress) -> None:
        if "acc" in p.metrics or p.stage == "done":
            print(f"epoch {p.epoch}/{p.epochs} {p.stage} " + " ".join(f"{k}={v:.4g}" for k, v in p.metrics.items()),
                  file=sys.stderr, flush=True)

    started = time.perf_counter()
    result = cluster(images, config, labels=labels, device=args.device, on_progress=log_progress,
                     checkpoint=args.checkpoint, eval_every=args.eval_every)
    wall = time.perf_counter() - started
    train_rates = [h["images_per_s"] for h in result.history if "images_per_s" in h]
    report = {
        "dataset": args.dataset, "split": args.split, "images": int(images.shape[0]), "method": args.method,
        "k": args.k, "epochs": len(result.history) or None, "seed": args.seed,
        **(result.metrics or {}),
        "wall_seconds": wall, "train_seconds": result.timings["train"],
        "train_images_per_s": float(np.median(train_rates)) if train_rates else None,
        "device": result.device, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "commit": commit(), "resumed_from_epoch": result.resumed_from_epoch,
        "config": result.config.to_dict(), "history": result.history,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=float))
    print(json.dumps({k: v for k, v in report.items() if k not in ("history", "config")}, default=float))


if __name__ == "__main__":
    main()

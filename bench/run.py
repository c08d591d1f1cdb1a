"""Run one method on one benchmark set and write a JSON result.

    python -m bench.run --dataset mnist --data ../shared/datasets --method mmdc --epochs 30 \
        --eval-every 2 --out bench/results/mnist-mmdc.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.datasets import load
from bench.flops import bf16_peak, epoch_flops
from core import ClusterConfig, cluster
from core.metrics import evaluate
from core.pipeline import resize
from core.result import ClusterResult, Progress
from core.runtime import pick_device


def commit() -> str:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    except OSError:  # no git where the benchmark runs (a bare GPU machine)
        return "unknown"
    return done.stdout.strip() or "unknown"


class BudgetSpent(Exception):
    """Raised from the progress callback once --budget-seconds is spent (at an epoch end)."""


def with_overrides(config: ClusterConfig, overrides: list[str]) -> ClusterConfig:
    """Apply `mmdc.lr=0.1`-style settings to the method parameters (values in JSON: 0.1, true, 300;
    a tuple as 0.5,0.8)."""
    for item in overrides:
        key, _, text = item.partition("=")
        group, _, name = key.partition(".")
        if group not in ("mmdc", "imc") or not hasattr(getattr(config, group), name):
            raise ValueError(f"{key!r} is not a method parameter; use mmdc.NAME or imc.NAME (core/config.py)")
        params = getattr(config, group)
        is_tuple = str(next(f.type for f in dataclasses.fields(params) if f.name == name)).startswith("tuple")
        try:
            value = tuple(json.loads(v) for v in text.split(",")) if is_tuple else json.loads(text)
        except json.JSONDecodeError:
            raise ValueError(f"{item!r}: write the value as JSON (0.1, true, 300) or a comma list (0.4,1.0)") from None
        config = dataclasses.replace(config, **{group: dataclasses.replace(params, **{name: value})})
    return config


def gpu_figures(config: ClusterConfig, shape: torch.Size, history: list[dict[str, float]]) -> dict[str, object]:
    """Seconds per epoch, achieved FLOP/s and its share of the bf16 peak, peak memory (issue #7)."""
    n, channels, size = int(shape[0]), int(shape[1]), int(shape[-1])
    seconds = np.diff([0.0] + [h["seconds"] for h in history]) if history else np.array([])
    figures: dict[str, object] = {"seconds_per_epoch": float(np.median(seconds)) if len(seconds) else None}
    flops = epoch_flops(config, n, channels, size)
    figures |= flops
    if len(seconds) and flops["epoch_flops"]:
        figures["achieved_tflops"] = flops["epoch_flops"] / float(np.median(seconds)) / 1e12
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        peak = bf16_peak(name)
        figures |= {"device_name": name, "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 2**30,
                    "bf16_peak_tflops": peak / 1e12 if peak else None}
        if peak and "achieved_tflops" in figures:
            figures["fraction_of_bf16_peak"] = figures["achieved_tflops"] * 1e12 / peak  # type: ignore[operator]
    return figures


def score_holdout(result: ClusterResult, dataset: str, root: Path, split: str) -> dict[str, object]:
    """Label a split the run never saw with its trained read-out, and score it."""
    assert result.predictor is not None  # every method hands back its trained read-out
    images, labels = load(dataset, root, split)
    size = result.predictor.image_size
    if images.shape[-1] != size:
        images = resize(images, size)
    predicted, _ = result.predictor(images)
    return {"split": split, "images": int(images.shape[0]), **evaluate(labels, predicted)}


def main(argv: list[str] | None = None) -> None:
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
    parser.add_argument("--holdout", default=None, choices=("train", "test"),
                        help="after a finished run, label this split with the trained model and score it "
                             "(IMC-SwAV's CIFAR-10 figure: train on train, score on test)")
    parser.add_argument("--eval-every", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="GROUP.NAME=VALUE",
                        help="a method parameter, e.g. imc.lr=0.002 or mmdc.refine_start=0.3 (repeatable)")
    parser.add_argument("--budget-seconds", type=float, default=0,
                        help="stop after the first epoch that ends past this wall time; with --checkpoint the "
                             "next run continues, and the JSON holds the curve so far (partial: true)")
    parser.add_argument("--verbose", action="store_true", help="print every epoch, not only evaluations")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.budget_seconds and args.checkpoint is None:
        parser.error("--budget-seconds needs --checkpoint, which keeps the partial run")
    if args.holdout is not None and args.holdout == args.split:
        parser.error(f"--holdout {args.holdout} is the split trained on; name the other one")
    config = ClusterConfig(k=args.k, method=args.method, epochs=args.epochs, seed=args.seed,
                           batch_size=args.batch_size, precision=args.precision)
    try:
        config = with_overrides(config, args.set)
    except (AttributeError, ValueError, TypeError) as error:
        parser.error(f"--set: {error}")
    logging.basicConfig(level=logging.INFO)
    if args.threads:
        torch.set_num_threads(args.threads)
    images, labels = load(args.dataset, args.data, args.split)
    if args.limit:
        images, labels = images[: args.limit], labels[: args.limit]

    first_epoch_end: list[int] = []  # this invocation's first finished epoch, for a partial run

    def log_progress(p: Progress) -> None:
        epoch_end = "seconds" in p.metrics  # reported after the epoch's checkpoint is written
        if epoch_end and not first_epoch_end:
            first_epoch_end.append(p.epoch)
        spent = time.perf_counter() - started
        if args.budget_seconds and epoch_end and p.epoch < p.epochs and spent > args.budget_seconds:
            raise BudgetSpent
        if "acc" in p.metrics or p.stage == "done" or (args.verbose and "seconds" in p.metrics):
            print(f"epoch {p.epoch}/{p.epochs} {p.stage} " + " ".join(f"{k}={v:.4g}" for k, v in p.metrics.items()),
                  file=sys.stderr, flush=True)

    started = time.perf_counter()
    holdout: dict[str, object] = {}
    try:
        result = cluster(images, config, labels=labels, device=args.device, on_progress=log_progress,
                         checkpoint=args.checkpoint, eval_every=args.eval_every)
        history, metrics, partial = result.history, result.metrics or {}, False
        device, resumed_from = result.device, result.resumed_from_epoch
        if args.holdout is not None:
            holdout = score_holdout(result, args.dataset, args.data, args.holdout)
    except BudgetSpent:
        assert args.checkpoint is not None  # parse-time check
        state = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
        history, partial, device = state["history"], True, str(pick_device(args.device))
        resumed_from = first_epoch_end[0] - 1
        scored = [h for h in history if "acc" in h]
        metrics = {key: scored[-1][key] for key in ("acc", "nmi", "ari")} if scored else {}
    wall = time.perf_counter() - started
    train_rates = [h["images_per_s"] for h in history if "images_per_s" in h]
    report = {
        "dataset": args.dataset, "split": args.split, "images": int(images.shape[0]), "method": args.method,
        "k": args.k, "epochs": len(history) or None, "seed": args.seed, "partial": partial, **metrics,
        "wall_seconds": wall, "train_seconds": history[-1]["seconds"] if history else 0.0,
        "train_images_per_s": float(np.median(train_rates)) if train_rates else None,
        "holdout": holdout or None, "device": device, "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "commit": commit(), "resumed_from_epoch": resumed_from,
        **gpu_figures(config, images.shape, history), "config": config.to_dict(), "history": history,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=float))
    print(json.dumps({k: v for k, v in report.items() if k not in ("history", "config")}, default=float))


if __name__ == "__main__":
    main()

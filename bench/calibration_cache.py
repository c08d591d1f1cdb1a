"""The trained runs bench/calibration.py calibrates: one `cluster()` run of the first 10,000 train
images of MNIST or Fashion-MNIST, saved as {out}/{dataset}-{method}.npz (outside git).

    flock /tmp/corral-cpu.lock python -m bench.calibration_cache --dataset mnist --method imc \\
        --time 420 --out /work/cache

Each file holds what calibration needs and nothing it would not have in the service: labels,
the method's raw (uncalibrated) confidences, embeddings, centres; plus the known classes
(`truth`, only to score), the run's ACC/epochs/seconds and, for IMC-SwAV, the classifier's
probabilities (`probabilities`, (N, k)) and its prototype cosines (`prototype_scores`, (N, K'))
beside its encoder features (`embeddings`); for MMDC, the projected backbone features its
calibration fits on (`calibration_space`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from bench.datasets import load
from core.calibration import CalibratedReadout
from core.config import ClusterConfig
from core.metrics import accuracy
from core.pipeline import cluster, resize
from core.predictor import Predictor

IMAGES = 10_000
IMAGE_SIZE = {"imc": 28, "mmdc": 32, "kmeans": 32}  # IMC-SwAV's grey-scale working size, as its runs


def make(dataset: str, method: str, budget_s: float, root: Path) -> dict[str, np.ndarray]:
    images, truth = load(dataset, root, split="train")
    images, truth = images[:IMAGES], truth[:IMAGES]
    size = IMAGE_SIZE[method]
    config = ClusterConfig(k=10, method=method, image_size=size,  # type: ignore[arg-type]
                           time_budget_s=None if method == "kmeans" else budget_s)
    started = time.perf_counter()
    result = cluster(images, config, device="cpu")
    seconds = time.perf_counter() - started
    assert result.predictor is not None and isinstance(result.predictor.readout, CalibratedReadout)
    base = result.predictor.readout.base  # the method's own read-out: its raw confidences
    raw = Predictor(base, size, 1, 10, method, result.predictor.precision)(resize(images, size))[1]
    saved = {"labels": result.labels, "confidences": raw.astype(np.float32), "embeddings": result.embeddings,
             "centres": result.centres, "truth": truth, "acc": np.float64(accuracy(truth, result.labels)),
             "epochs": np.int64(result.config.epochs or 0), "seconds": np.float64(seconds)}
    if method == "imc":
        with torch.no_grad():
            features = torch.from_numpy(result.embeddings)
            logits = base.net.classifier(features)
            saved["prototype_scores"] = base.net.scores(features).float().numpy().astype(np.float16)
        saved["probabilities"] = torch.softmax(logits.float(), 1).numpy()
    if result.calibration_space is not None:  # MMDC: where its calibration fits, not its embeddings
        saved["calibration_space"] = result.calibration_space
    return saved


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=("mnist", "fashion-mnist"), required=True)
    parser.add_argument("--method", choices=tuple(IMAGE_SIZE), required=True)
    parser.add_argument("--time", type=float, default=420.0, help="the deep methods' training budget, seconds")
    parser.add_argument("--root", type=Path, default=Path("/work/shared/datasets"))
    parser.add_argument("--out", type=Path, default=Path("/work/cache"))
    args = parser.parse_args(argv)
    saved = make(args.dataset, args.method, args.time, args.root)
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(args.out / f"{args.dataset}-{args.method}.npz", **saved)  # type: ignore[arg-type]
    print(f"{args.dataset} {args.method}: ACC {float(saved['acc']):.3f}, {int(saved['epochs'])} epochs, "
          f"{float(saved['seconds']):.0f} s", flush=True)


if __name__ == "__main__":
    main()

"""MMDC's epoch shape on short plans: the 1,797 digits at fixed epochs, the reference's grey-scale
shape (refinement from 40 %, learning rate x0.1 at 80 %) beside a late refinement without decay.

    flock /tmp/corral-cpu.lock python -m bench.mmdc_schedule --out bench/results/mmdc-short-schedule-digits-cpu.json

Fixed epochs on one thread, so the labels do not depend on the machine's speed. "reference" gives
both fractions; "short_plan" leaves them to the plan (core/methods/mmdc_plan.py: under SHORT_STEPS
steps, refinement from 75 % but at least in the last epoch, and no decay).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits

from core.config import ClusterConfig, MMDCParams
from core.kmeans import kmeans
from core.metrics import accuracy
from core.pipeline import cluster, resize

SHAPES: dict[str, tuple[float | None, float | None]] = {"reference": (0.4, 0.8), "short_plan": (None, None)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", default="1,2,4,6,8,10,12")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    digits = load_digits()
    pixels = torch.as_tensor(digits.images / 16 * 255).round().to(torch.uint8)[:, None]
    images = resize(pixels, 32)
    truth = np.asarray(digits.target)
    baseline = kmeans(images.flatten(1).float() / 255, 10, generator=torch.Generator().manual_seed(0)).labels
    rows = []
    for seed in map(int, args.seeds.split(",")):
        for epochs in map(int, args.epochs.split(",")):
            for shape, (refine, decay) in SHAPES.items():
                config = ClusterConfig(k=10, method="mmdc", epochs=epochs, seed=seed,
                                       mmdc=MMDCParams(refine_start=refine, lr_decay_at=decay))
                began = time.perf_counter()
                result = cluster(images, config, device="cpu")
                row = {"seed": seed, "epochs": epochs, "shape": shape, "refine_start": refine, "lr_decay_at": decay,
                       "acc": accuracy(truth, np.asarray(result.labels)), "seconds": time.perf_counter() - began}
                print(json.dumps(row), flush=True)
                rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"kmeans_pixels_acc": accuracy(truth, np.asarray(baseline)), "rows": rows}
    args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

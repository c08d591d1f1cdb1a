"""Labels of a fixed CPU run, saved or compared: the proof that a refactor left behaviour unchanged.

    python -m bench.same_labels --method mmdc --out /tmp/labels-before-mmdc.npy
    python -m bench.same_labels --method mmdc --out /tmp/labels-after-mmdc.npy \
        --compare /tmp/labels-before-mmdc.npy

Exits 1 when the labels differ from --compare's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.datasets import load
from core import ClusterConfig, cluster

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=["mmdc", "imc", "kmeans"], required=True)
    parser.add_argument("--limit", type=int, default=10_000, help="the first N MNIST train images")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, required=True, help="where to save the labels (.npy)")
    parser.add_argument("--compare", type=Path, help="reference labels (.npy) that must match")
    args = parser.parse_args(argv)

    # one thread, always: float reductions are split by thread count, so labels would differ
    torch.set_num_threads(1)
    images, _ = load("mnist", args.data, split="train")
    config = ClusterConfig(k=10, method=args.method, epochs=args.epochs, seed=args.seed)
    started = time.perf_counter()
    labels = cluster(images[: args.limit], config, device="cpu").labels
    print(f"{args.method}: {labels.shape[0]} labels in {time.perf_counter() - started:.0f} s")
    np.save(args.out, labels)
    if args.compare is None:
        return 0
    reference = np.load(args.compare)
    if reference.shape != labels.shape:
        print(f"DIFFERENT: shapes {reference.shape} and {labels.shape}")
        return 1
    differing = int((reference != labels).sum())
    print(("IDENTICAL" if differing == 0 else "DIFFERENT") + f": {differing} of {labels.shape[0]} labels differ")
    return 0 if differing == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""Criteria for choosing k, compared on trained representations (k = 2..k_max).

    python -m bench.k_criteria /work/cache/mnist-imc.npz ... --out bench/results/auto_k_criteria.json

Each .npz holds a finished run's `embeddings` (N, d) and the true classes `truth`. Per file: for every
criterion in core.kselect.CRITERIA the chosen k, the NMI of recluster() at it and at the true
number of classes, and the seconds the choice took; once per file, NMI at the true number of
classes with and without L2-normalising the embeddings (recluster normalises). --speed N also
times choose_k and recluster on N points made of the first file's embeddings (repeated with a
little noise: the sizes of a large job, not its quality).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from core.kselect import CRITERIA, choose_k, partitions, score_ks
from core.metrics import nmi
from core.recluster import fit_kmeans, recluster


def compare(path: Path, k_max: int, seed: int) -> dict[str, object]:
    data = np.load(path)
    x, truth = data["embeddings"].astype(np.float32), data["truth"].astype(np.int64)
    classes = len(np.unique(truth))
    at_classes = recluster(x, classes, seed=seed, labels=truth).metrics or {}
    raw = fit_kmeans(torch.from_numpy(x), classes, torch.Generator().manual_seed(seed)).labels.numpy()
    row: dict[str, object] = {"file": path.name, "n": len(x), "d": x.shape[1], "classes": classes,
                              "nmi_at_classes": at_classes["nmi"], "acc_at_classes": at_classes["acc"],
                              "nmi_at_classes_unnormalised": nmi(truth, raw), "criteria": {}}
    nmi_by_k: dict[int, float] = {}
    started = time.perf_counter()
    parts = partitions(x, k_max, seed=seed)  # every criterion scores the same k-means partitions
    row["partitions_s"] = round(time.perf_counter() - started, 2)
    for criterion in CRITERIA:
        started = time.perf_counter()
        scores = score_ks(parts, k_max, criterion=criterion)
        chosen = max(scores, key=lambda pair: pair[1])[0]
        seconds = time.perf_counter() - started
        if chosen not in nmi_by_k:
            nmi_by_k[chosen] = (recluster(x, chosen, seed=seed, labels=truth).metrics or {})["nmi"]
        row["criteria"][criterion] = {  # type: ignore[index]
            "k": chosen, "nmi": nmi_by_k[chosen], "nmi_ratio": nmi_by_k[chosen] / at_classes["nmi"],
            "score_s": round(seconds, 2), "scores": [[k, round(s, 5)] for k, s in scores]}
        print(f"{path.name:32} {criterion:18} k={chosen:3d} nmi={nmi_by_k[chosen]:.3f} "
              f"(at {classes}: {at_classes['nmi']:.3f}) {seconds:.1f}s", flush=True)
    return row


def speed(path: Path, n: int, k_max: int) -> dict[str, float]:
    x = np.load(path)["embeddings"].astype(np.float32)
    rng = np.random.default_rng(0)
    big = np.concatenate([x] * (n // len(x) + 1))[:n]
    big = big + rng.normal(scale=0.01 * float(np.abs(x).mean()), size=big.shape).astype(np.float32)
    started = time.perf_counter()
    choice = choose_k(big, k_max)
    chosen = time.perf_counter() - started
    timings = {"n": n, "d": big.shape[1], "choose_k_s": round(chosen, 2), "chosen_k": choice.k}
    for k in (10, choice.k, k_max):
        started = time.perf_counter()
        recluster(big, k)
        timings[f"recluster_k{k}_s"] = round(time.perf_counter() - started, 2)
    print(json.dumps(timings), flush=True)
    return timings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--k-max", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--speed", type=int, nargs="*", default=[], help="also time N points (e.g. 10000 70000)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    report = {"k_max": args.k_max, "threads": args.threads, "load_before": load_before,
              "speed": [speed(args.files[0], n, args.k_max) for n in args.speed],
              "runs": [compare(path, args.k_max, args.seed) for path in args.files],
              "load_after": os.getloadavg()[0]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""Choosing k on cached IMC-SwAV runs: k-means partitions (core/kselect.py) against classifier
heads (core/kheads.py), on the same trained network, over seeds; no training here.

    flock /tmp/corral-cpu.lock python -m bench.k_heads /work/cache/mnist-imc.npz \\
        /work/cache/fashion-mnist-imc.npz --seeds 0 1 2 --out bench/results/k_heads-cached-round10.json

Each .npz is written by bench/calibration_cache.py or `bench/auto_k.py --save` (embeddings,
prototype_scores, probabilities, truth). The prototype distributions are the softmax of the
cosines at IMC's temperature, as `IMCReadout.codes` gives them in a job; the saved classifier
probabilities are the training k's candidate, as the run's classifier is in a job. The known
classes only score the choices. `heads_points_error_only` is the same heads' choice under round
14's test, whose standard error left out the spread between fits (`core.kheads.fit_noise` = 0).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import cast
from unittest.mock import patch

import numpy as np
import torch
from sklearn.metrics import normalized_mutual_info_score
from torch import nn

from core.config import IMCParams
from core.kheads import ClassifierHead, choose_k_by_heads
from core.kselect import choose_k
from core.recluster import recluster


class SavedClassifier(nn.Module):
    """The run's trained classifier as a job passes it (`ClassifierHead`), from its saved
    probabilities of these same features (rows in the same order)."""

    def __init__(self, probabilities: np.ndarray):
        super().__init__()
        self.saved = torch.from_numpy(probabilities).float()
        self.k = self.saved.shape[1]

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        assert features.shape[0] == self.saved.shape[0]
        return self.saved


def scored(path: Path, seed: int, k_max: int) -> dict[str, object]:
    saved = np.load(path)
    truth, features = saved["truth"], saved["embeddings"]
    params = IMCParams()
    codes = torch.softmax(torch.from_numpy(saved["prototype_scores"].astype(np.float32)) / params.temperature, 1)
    trained = cast(ClassifierHead, SavedClassifier(saved["probabilities"]))
    started = time.perf_counter()
    heads = choose_k_by_heads(features, codes, k_max, beta=params.beta, seed=seed, trained=trained)
    heads_s = time.perf_counter() - started
    with patch("core.kheads.fit_noise", return_value=0.0):  # round 14's rule: the points' error alone
        points_only = choose_k_by_heads(features, codes, k_max, beta=params.beta, seed=seed, trained=trained)
    started = time.perf_counter()
    partitions = choose_k(features, k_max, seed=seed)
    kmeans_labels = recluster(features, partitions.k, seed=seed).labels
    kmeans_s = time.perf_counter() - started
    classifier = normalized_mutual_info_score(truth, saved["probabilities"].argmax(1))
    kmeans_at_10 = normalized_mutual_info_score(truth, recluster(features, 10, seed=seed).labels)
    finite = [(k, score) for k, score in heads.choice.scores if np.isfinite(score)]
    return {
        "run": path.stem, "seed": seed, "images": len(truth), "classifier_nmi_at_10": classifier,
        "kmeans_nmi_at_10": kmeans_at_10,
        "heads": {"k": heads.choice.k, "nmi": normalized_mutual_info_score(truth, heads.labels),
                  "k_by_plain_maximum": max(finite, key=lambda pair: pair[1])[0],
                  "seconds": heads_s, "scores": heads.choice.to_dict()["scores"]},
        "heads_points_error_only": {"k": points_only.choice.k,
                                    "nmi": normalized_mutual_info_score(truth, points_only.labels)},
        "kmeans_partitions": {"k": partitions.k, "nmi": normalized_mutual_info_score(truth, kmeans_labels),
                              "seconds": kmeans_s},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--k-max", type=int, default=50)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    load_before = os.getloadavg()[0]
    rows = []
    for path in args.runs:
        for seed in args.seeds:
            rows.append(scored(path, seed, args.k_max))
            row = rows[-1]
            print(f"{row['run']} seed {seed}: heads k={row['heads']['k']} NMI {row['heads']['nmi']:.3f} "  # type: ignore[index]
                  f"(points' error only: k={row['heads_points_error_only']['k']}) | "  # type: ignore[index]
                  f"k-means k={row['kmeans_partitions']['k']} NMI {row['kmeans_partitions']['nmi']:.3f} | "  # type: ignore[index]
                  f"classifier@10 {row['classifier_nmi_at_10']:.3f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"load_before": load_before, "load_after": os.getloadavg()[0], "rows": rows},
                                   indent=2))


if __name__ == "__main__":
    main()

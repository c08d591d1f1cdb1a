"""Calibrated confidence per method x dataset: ACC, ECE (15 bins) of the raw and the calibrated
confidences, mean confidence, and both reliability curves.

    flock /tmp/corral-cpu.lock python -m bench.calibration --cache /work/cache --time 60 \\
        --out bench/results/calibration.json

MNIST / Fashion-MNIST: trained outputs already on disk ({cache}/{dataset}-{method}.npz with labels,
raw confidences, embeddings, centres, truth; see bench/RESULTS.md "Calibration" for how they were
made; `imc-weak` is a 1-3 epoch IMC-SwAV run), calibrated here as `cluster()` does, except that
IMC's witnesses see its encoder features (the files hold no classifier probabilities). The 1,797
sklearn digits (8 px, resized to 32 as the demo does) are trained fresh with `cluster()` under
`--time`; their raw confidences come from the run's uncalibrated read-out, and for IMC the row
also gives the ECE with witnesses on the encoder features (`ece_on_embeddings`). Toy: Gaussian
blobs clustered by k-means. The known classes only score; core/calibration.py never sees them.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from core.calibration import CalibratedReadout, calibrate
from core.config import ClusterConfig
from core.kmeans import distance_confidence, distance_scale, kmeans
from core.metrics import accuracy, reliability
from core.pipeline import cluster, resize
from core.predictor import Predictor

METHODS = ("kmeans", "imc", "mmdc")


def row(dataset: str, method: str, truth: np.ndarray, labels: np.ndarray, raw: np.ndarray,
        calibrated: np.ndarray, seconds: float) -> dict[str, object]:
    before, after = reliability(truth, labels, raw), reliability(truth, labels, calibrated)
    return {
        "dataset": dataset, "method": method, "images": len(labels), "acc": accuracy(truth, labels),
        "ece_raw": before.ece, "ece": after.ece, "mean_raw": float(raw.mean()), "mean": float(calibrated.mean()),
        "calibration_s": seconds,
        "reliability": {name: {"counts": curve.counts.tolist(), "confidence": _listed(curve.confidence),
                               "accuracy": _listed(curve.accuracy)} for name, curve in (("raw", before),
                                                                                      ("calibrated", after))},
    }


def cached(path: Path, dataset: str, method: str) -> dict[str, object]:
    saved = np.load(path)
    labels, raw = saved["labels"].astype(np.int64), saved["confidences"]
    started = time.perf_counter()
    calibrated, _ = calibrate(raw, saved["embeddings"], labels, len(saved["centres"]))
    return row(dataset, method, saved["truth"], labels, raw, calibrated, time.perf_counter() - started)


def digits(method: str, budget_s: float) -> dict[str, object]:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.from_numpy((data.images * (255.0 / 16.0)).round().astype(np.uint8))  # (1797, 8, 8)
    config = ClusterConfig(k=10, method=method, image_size=32,  # type: ignore[arg-type]
                           time_budget_s=None if method == "kmeans" else budget_s)
    result = cluster(images, config, labels=data.target, device="cpu")
    assert result.predictor is not None and isinstance(result.predictor.readout, CalibratedReadout)
    base = Predictor(result.predictor.readout.base, 32, 1, 10, method, result.predictor.precision)
    raw = base(resize(images[:, None], 32))[1]  # the images as the run saw them
    scores = row("digits", method, data.target, result.labels, raw, result.confidences, float("nan"))
    if method == "imc":  # the alternative space for IMC's witnesses, as the cached rows use
        on_embeddings, _ = calibrate(raw, result.embeddings, result.labels, 10)
        scores["ece_on_embeddings"] = reliability(data.target, result.labels, on_embeddings).ece
    return scores


def toy(name: str, sizes: list[int], separation: float, dims: int, seed: int = 0) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(len(sizes), dims)) * separation / np.sqrt(2)
    truth = np.concatenate([np.full(size, c) for c, size in enumerate(sizes)])
    x = (means[truth] + rng.normal(size=(len(truth), dims))).astype(np.float32)
    fit = kmeans(torch.from_numpy(x), len(sizes), generator=torch.Generator().manual_seed(seed), restarts=3)
    raw = distance_confidence(fit.distances, distance_scale(fit.distances)).numpy()
    labels = fit.labels.numpy()
    started = time.perf_counter()
    calibrated, _ = calibrate(raw, x, labels, len(sizes))
    return row(name, "kmeans", truth, labels, raw, calibrated, time.perf_counter() - started)


def candidates(path: Path) -> dict[str, float]:
    """ECE of label-free candidates not chosen, on one cached run (docs/algorithms.md §8): the
    posterior of a diagonal Gaussian mixture fitted by EM from the run's labels, and the share of
    the 20 nearest neighbours in the same cluster, each as is and mapped from the raw score."""
    from sklearn.isotonic import IsotonicRegression
    from sklearn.mixture import GaussianMixture
    from sklearn.neighbors import NearestNeighbors

    from core.calibration import reduce

    saved = np.load(path)
    truth, labels, raw = saved["truth"], saved["labels"].astype(np.int64), saved["confidences"]
    k = len(saved["centres"])
    x = reduce(saved["embeddings"], 0).astype(np.float64)
    means = np.stack([x[labels == c].mean(0) for c in range(k)])
    mixture = GaussianMixture(k, covariance_type="diag", means_init=means, reg_covar=1e-4, random_state=0).fit(x)
    posterior = mixture.predict_proba(x)[np.arange(len(labels)), labels]
    near = NearestNeighbors(n_neighbors=21).fit(x).kneighbors(x, return_distance=False)[:, 1:]
    agreement = (labels[near] == labels[:, None]).mean(1)
    scores = {}
    for name, estimate in (("gmm_posterior", posterior), ("knn20_agreement", agreement)):
        mapped = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(raw, estimate).predict(raw)
        scores[name] = reliability(truth, labels, estimate).ece
        scores[f"{name}_of_raw"] = reliability(truth, labels, mapped).ece
    return scores


def _listed(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else round(float(v), 4) for v in values]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=Path("/work/cache"), help="the {dataset}-{method}.npz files")
    parser.add_argument("--time", type=float, default=60.0, help="each deep digits run's budget, seconds")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    rows = []
    for dataset in ("mnist", "fashion-mnist"):
        for method, name in [*((m, m) for m in METHODS), ("imc-weak", "imc-240s-3epochs-bad")]:
            path = args.cache / f"{dataset}-{name}.npz"
            if path.exists():
                rows.append(cached(path, dataset, method) | {"candidates": candidates(path)})
    rows += [digits(method, args.time) for method in METHODS]
    rows += [toy("toy-separated-unequal", [500, 300, 200], 8.0, 16),
             toy("toy-overlapping", [300] * 10, 1.5, 16)]
    for r in rows:
        print(f"{r['dataset']:22s} {r['method']:7s} ACC {r['acc']:.3f}  ECE {r['ece_raw']:.3f} -> {r['ece']:.3f}"
              f"  mean confidence {r['mean_raw']:.3f} -> {r['mean']:.3f}  {r.get('candidates', '')}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"load_before": load_before, "load_after": os.getloadavg()[0], "rows": rows},
                                   indent=2))


if __name__ == "__main__":
    main()

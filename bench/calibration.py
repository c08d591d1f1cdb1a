"""Calibrated confidence per method x dataset: ACC, ECE (15 bins) of the raw and the calibrated
confidences, mean confidence, and both reliability curves.

    flock /tmp/corral-cpu.lock python -m bench.calibration --cache /work/cache --time 60 \\
        --out bench/results/calibration.json

MNIST / Fashion-MNIST: trained runs on disk ({cache}/{dataset}-{method}.npz, made by
bench/calibration_cache.py: labels, raw confidences, embeddings, centres, truth), calibrated here
as `cluster()` does. The 1,797 sklearn digits (8 px, resized to 32 as the demo does) are trained
fresh with `cluster()` under `--time`; their raw confidences come from the run's uncalibrated
read-out. Toy: Gaussian blobs clustered by k-means. Every row also gives, as `candidates`, the ECE
of label-free calibrations not shipped, on the same run, and of the shipped one under other
seeds. The known classes only score; core/calibration.py never sees them.
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
SEEDS = (1, 2, 3, 4)  # the shipped calibration is also scored with these seeds (`candidates`)
EM_SEEDS = 4  # EM starts the shipped sample is refitted from (`em_seeds`)
# (mixtures, rows each): many small fits whose posteriors are pooled, a candidate not shipped
# (`pooled_fits`), each scored over seed 0 and SEEDS
POOLS = ((16, 1250), (32, 625))


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
    space = saved["calibration_space"] if "calibration_space" in saved else saved["embeddings"]  # as cluster()
    started = time.perf_counter()
    k = len(saved["centres"])
    calibrated, _ = calibrate(raw, space, labels, k)
    scores = row(dataset, method, saved["truth"], labels, raw, calibrated, time.perf_counter() - started)
    scores["run"] = {name: saved[name].item() for name in ("acc", "epochs", "seconds") if name in saved}
    if "calibration_space" in saved:  # the shipped mixture on the embedding, as before MMDC's space moved
        scores["ece_on_embeddings"] = reliability(saved["truth"], labels, calibrate(raw, saved["embeddings"],
                                                                                      labels, k)[0]).ece
    return scores | {"candidates": candidates(raw, space, labels, k, saved["truth"])}


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
    space = result.embeddings if result.calibration_space is None else result.calibration_space
    if result.calibration_space is not None:
        scores["ece_on_embeddings"] = reliability(data.target, result.labels, calibrate(
            raw, result.embeddings, result.labels, 10)[0]).ece
    return scores | {"candidates": candidates(raw, space, result.labels, 10, data.target)}


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
    scores = row(name, "kmeans", truth, labels, raw, calibrated, time.perf_counter() - started)
    return scores | {"candidates": candidates(raw, x, labels, len(sizes), truth)}


def candidates(raw: np.ndarray, embeddings: np.ndarray, labels: np.ndarray, k: int,
               truth: np.ndarray) -> dict[str, float]:
    """ECE of label-free calibrations not shipped, on the same run: the witnesses an earlier
    round shipped (k-means and spectral re-clusterings' agreement, mapped from the raw score), the
    mixture with diagonal covariances, the mean of 4 mixtures fitted on resampled halves
    (`bagged`), the mixture started at the run's clusters' own covariances (`clusters_start`,
    with its seconds and EM iterations), the shipped calibration under SEEDS (and `seeds_mean`,
    `seeds_max` with seed 0's), under other EM starts on the same sample (`em_seeds`), and many
    small mixtures pooled (`pooled_fits`)."""
    from sklearn.isotonic import IsotonicRegression
    from sklearn.mixture import GaussianMixture

    from core.calibration import reduce, sample

    index = sample(len(labels), k, 0)
    witnessed, agreement = witnesses(embeddings, labels, k, 0)
    x, own = reduce(embeddings[index], 0).astype(np.float64), labels[index]
    means = np.stack([x[own == c].mean(0) for c in np.unique(own)])
    mixture = GaussianMixture(len(means), covariance_type="diag", means_init=means, reg_covar=1e-4, random_state=0)
    diagonal = mixture.fit(x).predict_proba(x)[np.arange(len(own)), np.unique(own, return_inverse=True)[1]]
    pooled, averaged = bagged(embeddings, labels, k, 0)
    started = time.perf_counter()
    own_start, iterations = clusters_start(embeddings, labels, k, 0)
    scores = {"clusters_start_s": time.perf_counter() - started, "clusters_start_iterations": float(iterations)}
    for name, at, estimate in (("witnesses", witnessed, agreement), ("mixture_diag", index, diagonal),
                               ("mixture_bagged", pooled, averaged), ("mixture_clusters_start", index, own_start)):
        mapped = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(raw[at], estimate).predict(raw)
        scores[name] = reliability(truth, labels, mapped).ece
    shipped = {seed: reliability(truth, labels, calibrate(raw, embeddings, labels, k, seed)[0]).ece
               for seed in (0, *SEEDS)}  # with another sample and EM seed: how much one fit is chance
    scores |= {f"seed_{seed}": ece for seed, ece in shipped.items() if seed in SEEDS}
    scores |= {"seeds_mean": float(np.mean(list(shipped.values()))), "seeds_max": max(shipped.values())}
    return scores | em_seeds(raw, embeddings, labels, k, truth) | pooled_fits(raw, embeddings, labels, k, truth)


def pooled_fits(raw: np.ndarray, embeddings: np.ndarray, labels: np.ndarray, k: int,
           truth: np.ndarray) -> dict[str, float]:
    """A candidate not shipped: f fitted to the pooled posteriors of many small mixtures, each the
    shipped one on its own random rows (POOLS), which averages over the optima one EM reaches by
    chance. Mean and largest ECE over seed 0 and SEEDS, and the mean confidence."""
    from sklearn.isotonic import IsotonicRegression

    from core.calibration import posterior

    scores: dict[str, float] = {}
    for fits, rows in POOLS:
        eces, means = [], []
        for seed in (0, *SEEDS):
            rng, at, estimates = np.random.default_rng(seed), [], []
            for _ in range(fits):
                index = np.sort(rng.choice(len(labels), min(rows, len(labels)), replace=False))
                own_seed = int(rng.integers(2**31))
                at.append(index)
                estimates.append(posterior(embeddings[index], labels[index], k, own_seed)[1])
            mapped = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(
                raw[np.concatenate(at)], np.concatenate(estimates)).predict(raw)
            eces.append(reliability(truth, labels, mapped).ece)
            means.append(float(mapped.mean()))
        name = f"pooled_{fits}x{rows}"
        scores |= {f"{name}_mean": float(np.mean(eces)), f"{name}_max": float(np.max(eces)),
                   f"{name}_confidence": float(np.mean(means))}
    return scores


def em_seeds(raw: np.ndarray, embeddings: np.ndarray, labels: np.ndarray, k: int,
             truth: np.ndarray) -> dict[str, float]:
    """How much of one fit is EM's own random start: on the shipped sample (seed 0), the ECE of
    the shipped mixture under EM_SEEDS other starts (the least and the most), and of the mean of
    their posteriors (a candidate, EM_SEEDS times the cost)."""
    from sklearn.isotonic import IsotonicRegression

    from core.calibration import posterior

    def ece(index: np.ndarray, estimate: np.ndarray) -> float:
        mapped = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(raw[index], estimate).predict(raw)
        return reliability(truth, labels, mapped).ece

    fits = [posterior(embeddings, labels, k, 0, em_seed=100 + start) for start in range(EM_SEEDS)]
    index = fits[0][0]  # the sample is seed 0's for every start
    single = [ece(index, estimate) for _, estimate in fits]
    return {"em_seed_min": min(single), "em_seed_max": max(single),
            "mixture_em_averaged": ece(index, np.mean([estimate for _, estimate in fits], axis=0))}


def clusters_start(embeddings: np.ndarray, labels: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, int]:
    """A candidate not shipped: the shipped mixture with EM started at the run's clusters' own
    weights, means and covariances, where the shipped one takes weights and covariances from
    sklearn's k-means start. Returns the posterior of the own cluster on the shipped sample and
    the EM iterations it took."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    from core.calibration import EM_COST, FULL_MAX_K, MIN_ITERATIONS, REG_COVAR, reduce, sample

    index = sample(len(labels), k, seed)
    x, own = reduce(embeddings[index], seed).astype(np.float64), labels[index]
    present, column = np.unique(own, return_inverse=True)
    m, diagonal = len(present), k > FULL_MAX_K
    means = np.stack([x[column == c].mean(0) for c in range(m)])
    deviations = [x[column == c] - means[c] for c in range(m)]
    if diagonal:
        precisions = np.stack([1.0 / ((d * d).mean(0) + REG_COVAR) for d in deviations])
    else:
        ridge = REG_COVAR * np.eye(x.shape[1])
        precisions = np.stack([np.linalg.inv(d.T @ d / len(d) + ridge) for d in deviations])
    iterations = int(np.clip(EM_COST // (len(x) * m), MIN_ITERATIONS, 100))
    # with all three given, "random_from_data" only picks rows that are then overwritten
    mixture = GaussianMixture(m, covariance_type="diag" if diagonal else "full",
                              weights_init=np.bincount(column) / len(x), means_init=means,
                              precisions_init=precisions, init_params="random_from_data",
                              reg_covar=REG_COVAR, max_iter=iterations, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        mixture.fit(x)
    return mixture.predict_proba(x)[np.arange(len(own)), column], int(mixture.n_iter_)


def bagged(embeddings: np.ndarray, labels: np.ndarray, k: int, seed: int, members: int = 4,
           pool: int = 10_000) -> tuple[np.ndarray, np.ndarray]:
    """A candidate not shipped: (pool index, mean posterior of the own cluster over `members` full
    mixtures), each fitted by EM from the run's clusters on a random half of a pool of `pool` images,
    with 100 / members EM iterations each (about the shipped fit's cost in iterations)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    from core.calibration import REG_COVAR, reduce

    n = len(labels)
    index = np.sort(np.random.default_rng(seed).choice(n, pool, replace=False)) if n > pool else np.arange(n)
    x, own = reduce(embeddings[index], seed).astype(np.float64), labels[index]
    present, column = np.unique(own, return_inverse=True)
    rng, estimate = np.random.default_rng(seed), np.zeros(len(x))
    for member in range(members):
        half = rng.permutation(len(x))[: len(x) // 2]
        # a cluster missing from the half starts at its mean over the pool
        means = np.stack([x[half][own[half] == c].mean(0) if (own[half] == c).any() else x[own == c].mean(0)
                          for c in present])
        mixture = GaussianMixture(len(present), covariance_type="full", means_init=means, reg_covar=REG_COVAR,
                                  max_iter=max(10, 100 // members), random_state=seed + member)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=ConvergenceWarning)
            mixture.fit(x[half])
        estimate += mixture.predict_proba(x)[np.arange(len(x)), column]
    return index, estimate / members


def witnesses(embeddings: np.ndarray, labels: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The previous round's estimate: (sample index, agreement), per image the mean over two kinds
    of witness (3 k-means of 3 restarts; spectral on the 15-NN graph) of the share that, matched
    one-to-one to the run's clusters, put it in its own cluster."""
    import warnings

    from sklearn.cluster import SpectralClustering

    from core.assign import hungarian
    from core.calibration import reduce, sample

    def agrees(other: np.ndarray, own: np.ndarray) -> np.ndarray:
        size = max(k, int(other.max()) + 1, int(own.max()) + 1)
        table = np.zeros((size, size), dtype=np.int64)
        np.add.at(table, (other, own), 1)
        return (hungarian(table.max() - table)[other] == own).astype(np.float64)

    index = sample(len(labels), k, seed)
    x, own = torch.from_numpy(reduce(embeddings[index], seed)), labels[index]
    generator = torch.Generator().manual_seed(seed)
    kinds = [[agrees(kmeans(x, k, generator=generator, restarts=3).labels.numpy(), own) for _ in range(3)]]
    if k <= 64:
        spectral = SpectralClustering(k, affinity="nearest_neighbors", n_neighbors=15, assign_labels="cluster_qr",
                                      random_state=seed)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Graph is not fully connected")
            kinds.append([agrees(spectral.fit_predict(x.numpy()), own)])
    return index, np.mean([np.mean(votes, axis=0) for votes in kinds], axis=0)


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
        for method in METHODS:
            path = args.cache / f"{dataset}-{method}.npz"
            if path.exists():
                rows.append(cached(path, dataset, method))
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

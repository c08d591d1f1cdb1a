"""`core.cluster` with k omitted, as a job runs it: the chosen k, and NMI there against k = 10 of the same run.

    python -m bench.auto_k --set mnist --subset 10000 --time 240 --out bench/results/auto_k-mnist10k-imc.json
    python -m bench.auto_k --set fashion-mnist --subset 10000 --time 240 --out ...
    python -m bench.auto_k --set digits --time 60 --out bench/results/auto_k-digits-imc.json
    python -m bench.auto_k --set mnist-0-4 --time 240 --out ...      # 10,000 images of five digits
    python -m bench.auto_k --set mnist+fashion --time 240 --out ...  # 5,000 of each, twenty classes

MNIST and Fashion-MNIST come from ../shared/datasets at their own 28 px (bench/datasets.py, the
working size an upload of them gets, core.data.images.auto_image_size; --image-size resizes);
the digits are `corral demo`'s 1,797 PNGs, decoded as the service does.
NMI at k = 10 re-clusters the same run (core/recluster.py, as the service re-clusters a finished
job: IMC-SwAV, trained at 10, by its classifier, others by k-means; `nmi_kmeans_at_10` is k-means
for every method), so the numbers share one trained network; for IMC-SwAV, which trains at k = 10,
`nmi_classifier_at_10` is also its own classifier's NMI: the result the same run gives when
k = 10 is given. --save writes the run's
embeddings and classes to an .npz for bench/k_criteria.py.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import normalized_mutual_info_score

from core.config import ClusterConfig
from core.kheads import imc_readout_of
from core.pipeline import cluster
from core.recluster import recluster
from core.result import ClusterResult


def images_of(name: str, data: Path, subset: int | None) -> tuple[torch.Tensor, np.ndarray]:
    if name == "digits":
        from commands.demo import digits_zip
        from core.data.images import read_images

        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / "digits.zip"
            digits_zip(archive)
            decoded = read_images(archive)
        assert decoded.labels is not None
        images, labels = decoded.images, np.asarray(decoded.labels)
    elif name == "mnist-0-4":  # five classes, for a k that is not the training k
        from bench.datasets import load

        images, labels = load("mnist", data, split="train", native=True)
        keep = np.flatnonzero(labels < 5)[:10_000]
        images, labels = images[keep], labels[keep]
    elif name == "mnist+fashion":  # twenty classes: 5,000 of each set, Fashion-MNIST's as 10-19
        from bench.datasets import load

        digits, digit_labels = load("mnist", data, split="train", native=True)
        clothes, clothes_labels = load("fashion-mnist", data, split="train", native=True)
        images = torch.cat([digits[:5000], clothes[:5000]])
        labels = np.concatenate([digit_labels[:5000], clothes_labels[:5000] + 10])
    else:
        from bench.datasets import load

        images, labels = load(name, data, split="train", native=True)  # 28 px, as an upload of them
    return (images[:subset], labels[:subset]) if subset else (images, labels)


def imc_readout(result: ClusterResult) -> Any:
    """The run's IMCReadout under its calibration and head wrappers; None for other methods."""
    return imc_readout_of(None if result.predictor is None else result.predictor.readout)


def codes_of(result: ClusterResult) -> dict[str, np.ndarray]:
    """IMC-SwAV's prototype distributions and classifier probabilities of the run's images, to save."""
    readout = imc_readout(result)
    if readout is None:
        return {}
    with torch.no_grad():
        features = torch.from_numpy(result.embeddings).to(next(readout.parameters()).device)
        return {"prototype_scores": readout.net.scores(features).float().cpu().numpy().astype(np.float16),
                "probabilities": torch.softmax(readout.net.classifier(features).float(), 1).cpu().numpy()}


def trained_classifier_nmi(result: ClusterResult, labels: np.ndarray) -> float | None:
    """NMI of the run's own classifier (trained at k = 10) where the read-out has one (IMC-SwAV)."""
    readout = imc_readout(result)
    if readout is None:
        return None
    with torch.no_grad():
        logits = readout.net.classifier(torch.from_numpy(result.embeddings).to(next(readout.parameters()).device))
    return float(normalized_mutual_info_score(labels, logits.argmax(1).cpu().numpy()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--set", choices=("mnist", "fashion-mnist", "digits", "mnist-0-4", "mnist+fashion"),
                        default="digits")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    parser.add_argument("--subset", type=int, default=None, help="the first N training images")
    parser.add_argument("--method", default="auto", help="the default method unless given")
    parser.add_argument("--time", type=float, default=None, help="time_budget_s")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--k-max", type=int, default=50)
    parser.add_argument("--image-size", type=int, default=None, help="the working size (default: the upload's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", type=Path, default=None, help="write embeddings and truth here (.npz)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    images, labels = images_of(args.set, args.data, args.subset)
    config = ClusterConfig(method=args.method, time_budget_s=args.time, epochs=args.epochs, k_max=args.k_max,
                           seed=args.seed, image_size=args.image_size)
    load_before, started = os.getloadavg()[0], time.perf_counter()
    result = cluster(images, config, labels=labels)
    wall = time.perf_counter() - started
    assert result.k_choice is not None and result.metrics is not None
    # k = 10 as the service re-clusters the finished job (IMC-SwAV: its classifier), and by k-means
    readout = None if result.predictor is None else result.predictor.readout
    at_ten = recluster(result.embeddings, 10, seed=args.seed, labels=labels, readout=readout,
                       beta=config.imc.beta).metrics or {}
    kmeans_at_ten = recluster(result.embeddings, 10, seed=args.seed, labels=labels).metrics or {}
    classifier = trained_classifier_nmi(result, labels)
    if args.save is not None:
        saved = {"embeddings": result.embeddings, "truth": labels, "labels": result.labels} | codes_of(result)
        np.savez(args.save, **saved)  # type: ignore[arg-type]
    report = {
        "set": args.set, "n": len(labels), "method": args.method, "time_budget_s": args.time,
        "image_size": args.image_size,
        "epochs": len(result.history), "k_max": result.k_choice.k_max, "criterion": result.k_choice.criterion,
        "chosen_k": result.k_choice.k, "nmi": result.metrics["nmi"], "acc": result.metrics["acc"],
        "ari": result.metrics["ari"], "nmi_at_10": at_ten["nmi"], "acc_at_10": at_ten["acc"],
        "nmi_ratio": result.metrics["nmi"] / at_ten["nmi"], "seconds": round(wall, 1),
        "nmi_kmeans_at_10": kmeans_at_ten["nmi"],
        "nmi_ratio_kmeans": result.metrics["nmi"] / kmeans_at_ten["nmi"],
        # IMC-SwAV trains at k = 10 (core/kselect.TRAINING_K): its own classifier is the run at k = 10
        "nmi_classifier_at_10": classifier,
        "nmi_ratio_classifier": None if classifier is None else result.metrics["nmi"] / classifier,
        "choose_k_s": round(result.timings.get("choose_k", float("nan")), 2),
        "load_before": load_before, "load_after": os.getloadavg()[0],
        "scores": result.k_choice.to_dict()["scores"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps({key: value for key, value in report.items() if key != "scores"}))


if __name__ == "__main__":
    main()

"""Which trained representation re-clusters best: every candidate of one run, scored at several k.

    python -m bench.representations --set digits --method imc --epochs 25 \
        --out bench/results/representations-digits-imc.json

Trains once at k = 10 (a real core.cluster run), then embeds the images with each candidate
representation of the trained network (IMC-SwAV: encoder features, the normalised projection the
prototypes score, the classifier's hidden layer, its probabilities; MMDC: the unit embedding and
the backbone features), re-clusters each at several k (core/recluster.py) and runs choose_k on it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.auto_k import images_of
from core.config import ClusterConfig
from core.data import augment
from core.kselect import choose_k
from core.pipeline import cluster
from core.recluster import recluster
from core.runtime import autocast, channels_last

Embed = Callable[[torch.Tensor], torch.Tensor]


def imc_candidates(readout: torch.nn.Module) -> dict[str, Embed]:
    net = readout.net  # type: ignore[attr-defined]
    hidden = net.classifier[:-1]
    temperature = 0.1
    return {
        "encoder": readout.embed,  # type: ignore[dict-item]
        "projection": lambda x: F.normalize(net.project(readout.embed(x)), dim=1),  # type: ignore[operator]
        "prototype_codes": lambda x: torch.softmax(net.scores(readout.embed(x)) / temperature, dim=1),  # type: ignore[operator]
        "classifier_hidden": lambda x: hidden(readout.embed(x)),  # type: ignore[operator]
        "classifier_probabilities": lambda x: torch.softmax(net.classifier(readout.embed(x)), dim=1),  # type: ignore[operator]
    }


def mmdc_candidates(readout: torch.nn.Module) -> dict[str, Embed]:
    net = readout.net  # type: ignore[attr-defined]

    def backbone(x: torch.Tensor) -> torch.Tensor:
        return net.backbone(channels_last(augment.centre_crops(x, readout.size, readout.crop)))  # type: ignore[attr-defined]

    return {"embedding": readout.embed, "backbone": backbone}  # type: ignore[dict-item]


@torch.no_grad()
def embed_all(embed: Embed, readout: torch.nn.Module, images: torch.Tensor, precision: str) -> np.ndarray:
    readout.eval()
    with autocast(images.device, precision):
        return torch.cat([embed(part).float() for part in images.split(512)]).numpy()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--set", choices=("mnist", "fashion-mnist", "digits"), default="digits")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    parser.add_argument("--subset", type=int, default=None)
    parser.add_argument("--method", choices=("imc", "mmdc"), default="imc")
    parser.add_argument("--time", type=float, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--ks", type=int, nargs="+", default=[5, 10, 15, 20])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    images, labels = images_of(args.set, args.data, args.subset)
    load_before, started = os.getloadavg()[0], time.perf_counter()
    result = cluster(images, ClusterConfig(k=10, method=args.method, time_budget_s=args.time, epochs=args.epochs),
                     labels=labels)
    assert result.predictor is not None and result.metrics is not None
    print("run", json.dumps(result.metrics), len(result.history), "epochs", flush=True)
    readout, precision = result.predictor.readout, result.predictor.precision
    candidates = (imc_candidates if args.method == "imc" else mmdc_candidates)(readout)
    rows = []
    for name, embed in candidates.items():
        x = embed_all(embed, readout, images, precision)
        chosen = time.perf_counter()
        choice = choose_k(x, 50)
        row: dict[str, object] = {"representation": name, "d": x.shape[1], "chosen_k": choice.k,
                                  "choose_k_s": round(time.perf_counter() - chosen, 2)}
        for k in sorted({*args.ks, choice.k}):
            metrics = recluster(x, k, labels=labels).metrics or {}
            row[f"nmi_k{k}"], row[f"acc_k{k}"] = round(metrics["nmi"], 4), round(metrics["acc"], 4)
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {"set": args.set, "n": len(labels), "method": args.method, "trained_k": 10,
              "epochs": len(result.history), "run_metrics": result.metrics,
              "seconds": round(time.perf_counter() - started, 1), "load_before": load_before,
              "load_after": os.getloadavg()[0], "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

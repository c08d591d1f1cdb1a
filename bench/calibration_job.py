"""Calibration on a trained service job: bench.recluster's 70,000-image MNIST IMC-SwAV job
(1 epoch), its saved model run over the 70,000 images in dataset order, calibrated in this
process by the shipped code on the unit projection (`core.methods.imc.unit_projection`, where
IMC-SwAV's calibration looks since round 18) and, as the peer, on the encoder features (round
17's space), seeds 0-4.

    flock /tmp/corral-cpu.lock python -m bench.calibration_job \\
        --out bench/results/calibration-mnist70k-imc-job-round18.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from bench.datasets import load
from core.calibration import CalibratedReadout, calibrate, projected
from core.methods.imc import IMCReadout, unit_projection
from core.metrics import accuracy, reliability
from core.pipeline import resize
from core.predict import load_model
from core.predictor import Predictor

JOBS = Path("bench/out/recluster/mnist-70000-imc-1ep/sqlite/jobs")  # where bench.recluster keeps it
SEEDS = range(5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("/work/shared/datasets"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    job = sorted(JOBS.glob("*/embeddings.npy"))[0].parent  # the trained job: the only one with embeddings
    predictor = load_model(job / "model.pt")
    images, truth = load("mnist", args.root)
    x = resize(images, predictor.image_size)
    x = x[:, None] if x.ndim == 3 else x
    assert isinstance(predictor.readout, CalibratedReadout)
    base = predictor.readout.base  # the method's own read-out: raw confidences
    assert isinstance(base, IMCReadout)
    labels, raw = Predictor(base, predictor.image_size, predictor.channels, predictor.k, predictor.method,
                            predictor.precision)(x)
    with torch.no_grad():
        features = torch.cat([base.embed(part).float() for part in x.split(1000)])
    spaces = {"projection": projected(unit_projection(base.net, features).numpy(), 0),  # as cluster(), seed 0
              "features": features.numpy()}
    scores: dict[str, float] = {"acc": accuracy(truth, labels), "ece_raw": reliability(truth, labels, raw).ece}
    for space, embeddings in spaces.items():
        for seed in SEEDS:
            calibrated, _ = calibrate(raw, embeddings, labels, predictor.k, seed)
            scores |= {f"{space}_{seed}": reliability(truth, labels, calibrated).ece,
                       f"{space}_{seed}_confidence": float(np.mean(calibrated))}
        values = [scores[f"{space}_{seed}"] for seed in SEEDS]
        scores |= {f"{space}_mean": float(np.mean(values)), f"{space}_max": max(values)}
        print(json.dumps({key: value for key, value in scores.items() if key.startswith(space)}), flush=True)
    args.out.write_text(json.dumps(scores, indent=2))


if __name__ == "__main__":
    main()

"""Calibration on a trained service job: bench.recluster's 70,000-image MNIST IMC-SwAV job
(1 epoch), its saved model run over the 70,000 images in dataset order, calibrated in this
process by the shipped code and by round 15's one fit (`bench.calibration.one_fit`), seeds 0-2.

    flock /tmp/corral-cpu.lock python -m bench.calibration_job \\
        --out bench/results/calibration-mnist70k-imc-job-round17.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.isotonic import IsotonicRegression

from bench.calibration import one_fit
from bench.datasets import load
from core.calibration import CalibratedReadout, calibrate
from core.metrics import accuracy, reliability
from core.pipeline import resize
from core.predict import load_model
from core.predictor import Predictor

JOBS = Path("bench/out/recluster/mnist-70000-imc-1ep/sqlite/jobs")  # where bench.recluster keeps it


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
    labels, raw = Predictor(base, predictor.image_size, predictor.channels, predictor.k, predictor.method,
                            predictor.precision)(x)
    with torch.no_grad():
        embeddings = torch.cat([predictor.readout.embed(part).float() for part in x.split(1000)]).numpy()
    scores: dict[str, float] = {"acc": accuracy(truth, labels), "ece_raw": reliability(truth, labels, raw).ece}
    for seed in range(3):
        calibrated, _ = calibrate(raw, embeddings, labels, predictor.k, seed)
        index, estimate = one_fit(embeddings, labels, predictor.k, seed)
        before = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(raw[index], estimate).predict(raw)
        scores |= {f"shipped_{seed}": reliability(truth, labels, calibrated).ece,
                   f"shipped_{seed}_confidence": float(np.mean(calibrated)),
                   f"one_fit_{seed}": reliability(truth, labels, before).ece,
                   f"one_fit_{seed}_confidence": float(np.mean(before))}
        print(json.dumps(scores), flush=True)
    args.out.write_text(json.dumps(scores, indent=2))


if __name__ == "__main__":
    main()

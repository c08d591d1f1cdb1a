"""Re-clustering with the calibration's BLAS threads limited (shipped) and not, side by side.

On the trained 70,000-image job of bench/recluster.py (run it first), in one process, per k and
repeat alternating the two settings of `core.calibration.BLAS_THREADS` (1, and None: the
libraries' default): the whole `core.recluster.recluster` call with the job's read-out, then
`core.calibration.calibrate` alone on its result; seconds and mean confidence.

    flock /tmp/corral-cpu.lock python -m bench.blas_threads --out bench/results/blas-threads.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

import core.calibration
from bench.recluster import N_IMAGES, OUT, TRAIN
from bench.upload import cpu_model
from core.predict import load_model
from core.recluster import recluster


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 15, 20, 30])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    folder = OUT / f"mnist-{N_IMAGES}-{TRAIN['method']}-1ep"
    job = json.loads((folder / "trained.json").read_text())["id"]
    jobs = folder / "sqlite" / "jobs" / job
    embeddings = np.load(jobs / "embeddings.npy")
    readout = load_model(jobs / "model.pt").readout
    recluster(embeddings, 7, readout=readout)  # first-call costs, as the worker's warm-up pays them
    rows = []
    for k in args.ks:
        for _ in range(args.repeats):
            for threads in (None, 1):
                core.calibration.BLAS_THREADS = threads
                started = time.perf_counter()
                clustering = recluster(embeddings, k, readout=readout)
                whole = time.perf_counter() - started
                started = time.perf_counter()
                core.calibration.calibrate(clustering.confidences, embeddings, clustering.labels, k)
                row = {"k": k, "blas_threads": threads, "recluster_s": round(whole, 3),
                       "calibrate_s": round(time.perf_counter() - started, 3),
                       "mean_confidence": float(clustering.confidences.mean())}
                print(json.dumps(row), flush=True)
                rows.append(row)
    args.out.write_text(json.dumps({"machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
                                    "images": int(embeddings.shape[0]), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()

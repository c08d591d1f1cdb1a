"""`corral cluster --time` as a user runs it, beside k-means in the same run, with the load it ran under.

    python -m bench.budget --set digits --time 60 --out bench/results/budget-digits-60s.json
    python -m bench.budget --set digits --time 10,15,20,30,45,60 --out bench/results/budget-digits-sweep.json
    python -m bench.budget --set mnist10k --data ../shared/datasets --time 300 --out ...
    python -m bench.budget --set cifar5k --data ../shared/datasets --time 600 --methods kmeans,auto --out ...

Each method runs as its own `corral cluster` process on an archive of PNGs (the digits as the demo
builds them, 8 -> 32 px; the first 10,000 MNIST training images at 28 px; or the first 5,000
CIFAR-10 training images at 32 px), one after another:
k-means once, then each budget of the comma list for every deep method in turn.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from bench.datasets import load, read_idx

SUMMARY = re.compile(r"in (?P<total>[\d.]+) s(?: \((?P<epochs>\d+) epochs\))?")
RAN = re.compile(r"clusters of sizes \[[\d, ]*\] by (?P<ran>\w+) ")
SCORES = re.compile(r"ACC (?P<acc>[\d.]+)\s+NMI (?P<nmi>[\d.]+)\s+ARI (?P<ari>[\d.]+)")


def mnist_zip(path: Path, root: Path, limit: int) -> int:
    """The first `limit` MNIST training images as PNGs, one folder per digit."""
    images = read_idx(root / "mnist" / "train-images-idx3-ubyte.gz")[:limit]
    labels = read_idx(root / "mnist" / "train-labels-idx1-ubyte.gz")[:limit]
    return png_zip(path, images, labels)


def cifar_zip(path: Path, root: Path, limit: int) -> int:
    """The first `limit` CIFAR-10 training images as 32-px RGB PNGs, one folder per class."""
    images, labels = load("cifar10", root, split="train")
    return png_zip(path, images[:limit].permute(0, 2, 3, 1).numpy(), labels[:limit])


def png_zip(path: Path, images: np.ndarray, labels: np.ndarray) -> int:
    """(N, S, S) or (N, S, S, 3) uint8 images as PNGs named by their class folder."""
    with zipfile.ZipFile(path, "w") as archive:
        for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
            buffer = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")
            archive.writestr(f"{label}/{i:05d}.png", buffer.getvalue())
    return len(images)


def run_cluster(archive: Path, method: str, budget: str | None, backbone: str = "auto") -> dict[str, object]:
    command = [sys.executable, "-m", "core.cli", "cluster", str(archive), "--k", "10", "--method", method, "--quiet"]
    if budget is not None:
        command += ["--time", budget]
    if backbone != "auto":
        command += ["--backbone", backbone]
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:  # 2: refused, e.g. a budget without room for one epoch, as the user sees it
        return {"method": method, "time": budget, "wall_s": round(wall, 1), "exit": done.returncode,
                "error": done.stderr.strip()[-2000:]}
    summary, scores, ran = SUMMARY.search(done.stdout), SCORES.search(done.stdout), RAN.search(done.stdout)
    assert summary is not None and scores is not None, done.stdout
    return {"method": method, "ran": ran["ran"] if ran else method, "backbone": backbone, "time": budget,
            "wall_s": round(wall, 1), "cluster_s": float(summary["total"]),
            "epochs": int(summary["epochs"]) if summary["epochs"] else None,
            **{key: float(value) for key, value in scores.groupdict().items()},
            "load_before": load_before, "load_after": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--set", choices=("digits", "mnist10k", "cifar5k"), default="digits")
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--time", default="60", help="a budget, or a comma list of them")
    parser.add_argument("--methods", default="kmeans,mmdc,imc,auto", help="comma list; kmeans runs without --time")
    parser.add_argument("--backbone", default="auto", help="the deep methods' (k-means has none)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / f"{args.set}.zip"
        if args.set == "digits":
            from commands.demo import digits_zip

            n = digits_zip(archive)
        elif args.set == "mnist10k":
            n = mnist_zip(archive, args.data, 10_000)
        else:
            n = cifar_zip(archive, args.data, 5_000)
        methods = args.methods.split(",")
        plan = [("kmeans", None)] if "kmeans" in methods else []
        plan += [(method, budget) for budget in args.time.split(",") for method in methods if method != "kmeans"]
        runs = []
        for method, budget in plan:
            runs.append(run_cluster(archive, method, budget, "auto" if method == "kmeans" else args.backbone))
            print(json.dumps(runs[-1]), flush=True)
    report = {"set": args.set, "images": n, "time": args.time, "cpus": os.cpu_count(), "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

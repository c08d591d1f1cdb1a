"""`corral demo`: cluster scikit-learn's 1,797 real handwritten digits through the REST API."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from commands.ports import free_port
from commands.serve import stop_process_group

UPSCALE = 4  # 8x8 -> 32x32 px, the working size of the small-image backbones


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("demo", help="cluster scikit-learn's 1,797 handwritten digits")
    parser.add_argument("--server", help="URL of a running Corral (default: start one)")
    parser.add_argument(
        "--mmdc-epochs",
        type=int,
        default=0,
        help="also run MMDC for this many epochs (0 = k-means only)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_demo(server=args.server, mmdc_epochs=args.mmdc_epochs)


def digits_zip(path: Path) -> int:
    """Write the digits as PNGs, one folder per class (so the job reports ACC/NMI/ARI)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for i, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
            grey = (pixels * (255.0 / 16.0)).round().astype(np.uint8)  # (8, 8), values 0..16
            image = Image.fromarray(grey).resize(
                (8 * UPSCALE, 8 * UPSCALE), Image.Resampling.BILINEAR
            )
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            archive.writestr(f"{label}/digit_{i:04d}.png", buffer.getvalue())
    return len(digits.images)


def run_demo(*, server: str | None, mmdc_epochs: int = 0) -> int:
    process = None
    if server is None:
        port = free_port()
        server = f"http://127.0.0.1:{port}"
        data_dir = os.environ.get("CORRAL_DATA_DIR", "./corral-data")
        print(f"starting corral serve on {server} (data in {data_dir})")
        process = subprocess.Popen(
            [sys.executable, "-m", "commands", "serve", "--port", str(port)],
            start_new_session=True,
        )
    try:
        with httpx.Client(base_url=server, timeout=60) as client:
            _wait_ready(client, process)
            with tempfile.TemporaryDirectory() as tmp:
                archive = Path(tmp) / "digits.zip"
                n = digits_zip(archive)
                print(f"built {archive.name}: {n} handwritten digits, one folder per class")
                runs: list[dict[str, Any]] = [
                    {"k": 10, "method": "kmeans", "name": "digits-kmeans"}
                ]
                if mmdc_epochs:
                    runs.append(
                        {"k": 10, "method": "mmdc", "epochs": mmdc_epochs, "name": "digits-mmdc"}
                    )
                ok = all(_run_one(client, archive, params) for params in runs)
        return 0 if ok else 1
    finally:
        if process is not None:
            stop_process_group(process)


def _wait_ready(client: httpx.Client, process: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"corral serve exited with {process.returncode}")
        try:
            if client.get("/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{client.base_url} did not become ready")


def _run_one(client: httpx.Client, archive: Path, params: dict[str, Any]) -> bool:
    started = time.monotonic()
    with archive.open("rb") as handle:
        response = client.post(
            "/jobs",
            files={"archive": ("digits.zip", handle, "application/zip")},
            data={"params": json.dumps(params)},
        )
    if response.status_code != 202:
        print(f"submit failed: {response.status_code} {response.text}")
        return False
    job_url = response.headers["Location"]
    print(f"\n{params['name']}: job {job_url} queued")
    job = response.json()
    last = ""
    while job["state"] in ("queued", "running", "cancelling"):
        time.sleep(0.5)
        job = client.get(job_url).json()
        progress = job["progress"]
        epoch = f"{progress['epoch']}/{progress['epochs']}"
        line = f"  {job['state']:<10} {progress['stage'] or '':<10} epoch {epoch}"
        if line != last:
            print(line)
            last = line
    if job["state"] != "succeeded":
        print(f"job ended {job['state']}: {json.dumps(job.get('error'), indent=2)}")
        return False
    clusters = client.get(f"{job_url}/clusters").json()["clusters"]
    print(f"  done in {time.monotonic() - started:.1f} s on {job['device']}")
    print("  cluster  size  mean conf  top images (folder = true digit)")
    for cluster in clusters:
        tops = Counter(ref["path"].split("/")[0] for ref in cluster["representatives"])
        shown = ", ".join(f"{digit}x{count}" for digit, count in tops.most_common())
        print(
            f"  {cluster['id']:>7}  {cluster['size']:>4}  "
            f"{cluster['mean_confidence']:>9.3f}  {shown}"
        )
    metrics = job["metrics"] or {}
    print(
        "  ACC {acc:.3f}  NMI {nmi:.3f}  ARI {ari:.3f}  (against the class folders)".format(
            acc=metrics.get("acc", float("nan")),
            nmi=metrics.get("nmi", float("nan")),
            ari=metrics.get("ari", float("nan")),
        )
    )
    return True

"""`corral demo`: the default deep method beside the k-means baseline on scikit-learn's 1,797 real
handwritten digits, through the REST API of a local `corral serve` (or a running one)."""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from commands.ports import free_port
from commands.serve import stop_process_group
from core.config import DEFAULT_METHOD, METHOD_NAMES

UPSCALE = 4  # 8x8 -> 32x32 px, the working size of the small-image backbones
# The deep job's time budget: about two minutes of training on a 2-core CPU, where IMC-SwAV fitted
# 25 epochs of the digits into 120 s (ACC 0.938) on the shared machine (bench/RESULTS.md, "Small sets").
DEEP_BUDGET_S = 110
NAMES = {"auto": "auto", "imc": "IMC-SwAV", "mmdc": "MMDC", "kmeans": "k-means (pixels)"}
ACTIVE = ("queued", "running", "cancelling")


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("demo", help="the default deep method beside k-means on 1,797 handwritten digits")
    parser.add_argument("--server", help="URL of a running Corral (default: start one)")
    parser.add_argument("--method", choices=[m for m in METHOD_NAMES if m != "kmeans"], default=DEFAULT_METHOD,
                        help=f"the deep method (default {DEFAULT_METHOD})")
    parser.add_argument("--time", type=float, default=DEEP_BUDGET_S, metavar="SECONDS",
                        help=f"the deep job's time budget (default {DEEP_BUDGET_S})")
    parser.add_argument("--keep", action="store_true", help="leave the server running afterwards (Ctrl-C stops it)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rows = run_demo(server=args.server, method=args.method, budget_s=args.time, keep=args.keep)
    return 0 if rows and all(row.state == "succeeded" for row in rows) else 1


@dataclass
class Row:
    """One job of the demo, as the table shows it."""

    name: str
    url: str
    method: str | None = None  # as submitted; the name shows what method=auto settled on once known
    state: str = "queued"
    line: str = "queued"
    metrics: dict[str, float] | None = None
    seconds: float | None = None


def digits_zip(path: Path) -> int:
    """Write the digits as PNGs, one folder per class (so the job reports ACC/NMI/ARI)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for i, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
            grey = (pixels * (255.0 / 16.0)).round().astype(np.uint8)  # (8, 8), values 0..16
            image = Image.fromarray(grey).resize((8 * UPSCALE, 8 * UPSCALE), Image.Resampling.BILINEAR)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            archive.writestr(f"{label}/digit_{i:04d}.png", buffer.getvalue())
    return len(digits.images)


def run_demo(*, server: str | None, method: str = DEFAULT_METHOD, budget_s: float = DEEP_BUDGET_S,
             keep: bool = False) -> list[Row]:
    """Both jobs submitted, followed on one line, then side by side; returns them."""
    process, log_path = None, None
    if server is None:
        server, process, log_path = start_server()
    try:
        with httpx.Client(base_url=server, timeout=60) as client:
            wait_ready(client, process, log_path)
            with tempfile.TemporaryDirectory() as tmp:
                archive = Path(tmp) / "digits.zip"
                n = digits_zip(archive)
                print(f"built {archive.name}: {n} handwritten digits, one folder per class")
                rows = [submit(client, archive, {"k": 10, "method": "kmeans", "name": "digits-kmeans"}),
                        submit(client, archive, {"k": 10, "method": method, "time_budget_s": budget_s,
                                                 "name": f"digits-{method}"})]
            follow(client, rows)
            print_table(rows, server)
            if keep and process is not None:
                print(f"\nCorral keeps running at {server}/ui (its log: {log_path}); Ctrl-C stops it")
                process.wait()
        return rows
    except KeyboardInterrupt:
        print()
        return []
    finally:
        if process is not None:
            stop_process_group(process)


def start_server() -> tuple[str, subprocess.Popen[bytes], Path]:
    """`corral serve` on a free port, its log (access lines included) in a file, not the terminal."""
    port = free_port()
    data_dir = Path(os.environ.get("CORRAL_DATA_DIR", "./corral-data"))
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "demo-server.log"
    print(f"starting corral serve on http://127.0.0.1:{port} (data in {data_dir}, log in {log_path})")
    with log_path.open("ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "commands", "serve", "--port", str(port)],
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return f"http://127.0.0.1:{port}", process, log_path


def wait_ready(client: httpx.Client, process: subprocess.Popen[bytes] | None, log_path: Path | None) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log_path.read_text(errors="replace").splitlines()[-5:] if log_path else []
            raise SystemExit("\n".join([f"corral serve exited with {process.returncode}:", *tail]))
        try:
            if client.get("/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{client.base_url} did not become ready")


def submit(client: httpx.Client, archive: Path, params: dict[str, Any]) -> Row:
    with archive.open("rb") as handle:
        response = client.post("/jobs", files={"archive": ("digits.zip", handle, "application/zip")},
                               data={"params": json.dumps(params)})
    if response.status_code != 202:
        raise SystemExit(f"submit failed: {response.status_code} {response.text}")
    return Row(NAMES[params["method"]], response.headers["Location"], params["method"])


def follow(client: httpx.Client, rows: list[Row]) -> None:
    """Poll every job until all have ended, redrawing one status line."""
    while True:
        for row in rows:
            if row.state in ACTIVE:
                update(row, client.get(row.url).json())
        width = shutil.get_terminal_size().columns - 1  # one line, however narrow the terminal
        line = " | ".join(f"{row.name}: {row.line}" for row in rows)
        print(f"\r{line[:width]:<{width}}", end="", flush=True)
        if not any(row.state in ACTIVE for row in rows):
            print()
            return
        time.sleep(0.5)


def update(row: Row, job: dict[str, Any]) -> None:
    row.state, progress = job["state"], job["progress"]
    if row.method == "auto" and progress.get("method") in NAMES:
        row.name = f"{NAMES[progress['method']]} (auto)"
    if row.state == "running" and progress["epochs"]:
        row.line = f"{progress['stage']} {progress['epoch']}/{progress['epochs']}"  # fits 80 columns
        if progress.get("expected_end_at"):  # the time budget's plan
            left = datetime.fromisoformat(progress["expected_end_at"]).timestamp() - time.time()
            row.line += f", {max(0.0, left):.0f} s left"
    elif row.state == "running":
        row.line = progress["stage"] or "running"
    elif row.state == "succeeded":
        row.metrics, row.seconds = job["metrics"] or {}, (job["timings"] or {}).get("total")
        row.line = f"done in {row.seconds:.0f} s" if row.seconds is not None else "done"
    else:
        row.line = row.state if row.state != "failed" else f"failed: {(job.get('error') or {}).get('detail', '')}"


def print_table(rows: list[Row], server: str) -> None:
    print(f"\n{'':<18} {'ACC':>6} {'NMI':>6} {'time':>8}")
    for row in rows:
        m = row.metrics or {}
        acc, nmi = m.get("acc", float("nan")), m.get("nmi", float("nan"))
        seconds = f"{row.seconds:.1f} s" if row.seconds is not None else "-"
        print(f"{row.name:<18} {acc:>6.3f} {nmi:>6.3f} {seconds:>8}")
    for row in rows:
        print(f"{row.name}: {server}/ui/jobs/{row.url.rsplit('/', 1)[-1]}")

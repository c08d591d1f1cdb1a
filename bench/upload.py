"""Issue 15 item 4: seconds to the 202 and the API's peak RSS for big MNIST zips.

Builds a 10,000- and a 70,000-image MNIST zip once (one 28x28 PNG per digit, in digit folders,
bench/out/), then for each source tree and backend starts the real API (`python -m commands
api`, SQLite or a fresh Postgres database), POSTs one archive and reads the process's VmHWM (its
peak RSS since start); meanwhile a GET /health every 50 ms shows whether the event loop is free.
`--base COMMIT` runs that commit's tree too, in the same run, so before and after share the
machine's load. `--profile` adds one sampled pass per tree (py-spy, every thread, installed with
`pip install --target bench/out/tools py-spy`) whose stacks are sorted into intake steps.

    python -m bench.upload --base 29afccd --profile sqlite --out bench/results/upload.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench import service
from bench.datasets import read_idx
from bench.service import drop_database, fresh_database
from commands.ports import free_port
from commands.serve import stop_process_group

OUT = Path("bench/out")
MNIST = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mnist"
PY_SPY = OUT / "tools" / "bin" / "py-spy"
PARAMS = '{"k": 10, "method": "kmeans"}'

# Leaf-first: the first frame of a sampled stack that matches names the step it belongs to.
STEPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("image checks (Pillow open/decode)", ("PIL/",)),
    ("database insert", ("sqlalchemy/", "psycopg/", "sqlite3", "store/jobs.py")),
    ("multipart parse + spooling", ("multipart/", "formparsers.py", "tempfile.py", "datastructures.py")),
    ("upload copy + hash", ("save_upload", "_chunks", "hashlib")),
    ("zip reads + byte meter", ("zipfile", "tarfile", "zips.py", "archive_readers.py", "archives.py", "zlib")),
    ("per-image file writes", ("_write", "os.py", "batches.py", "pathlib.py")),
    ("intake bookkeeping (screens, paths)", ("intake.py",)),
    ("job folder cleanup", ("shutil.py",)),
)


def mnist_zip(n: int) -> Path:
    """A zip of the first `n` MNIST images (train then test), `<digit>/<index>.png`; built once."""
    path = OUT / f"mnist-{n}.zip"
    if path.exists():
        return path
    parts = [("train", "train"), ("test", "t10k")]
    images = np.concatenate([read_idx(MNIST / f"{p}-images-idx3-ubyte.gz") for _, p in parts])
    labels = np.concatenate([read_idx(MNIST / f"{p}-labels-idx1-ubyte.gz") for _, p in parts])
    OUT.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        for i in range(n):
            png = io.BytesIO()
            Image.fromarray(images[i]).save(png, format="PNG")
            archive.writestr(f"{labels[i]}/{i:05d}.png", png.getvalue())
    partial.rename(path)
    return path


def source_tree(commit: str) -> Path:
    """`commit`'s files under bench/out/tree-<commit> (git archive; no checkout is touched)."""
    tree = OUT / f"tree-{commit}"
    if not tree.exists():
        tree.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", commit], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree.resolve()


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def proc_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def api_env(tree: Path, data_dir: Path, database_url: str) -> dict[str, str]:
    return {
        **os.environ, "PYTHONPATH": str(tree), "CORRAL_DATA_DIR": str(data_dir),
        "CORRAL_DATABASE_URL": database_url, "CORRAL_BROKER_URL": "filesystem://",
        "CORRAL_LOG_LEVEL": "WARNING",
    }


def start_api(tree: Path, env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    subprocess.run([sys.executable, "-m", service.commands_module(tree), "migrate"], cwd=tree, env=env, check=True,
                   capture_output=True)
    return service.start_api(env, port, cwd=tree)


def post(port: int, archive: Path) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    with archive.open("rb") as body:
        response = httpx.post(
            f"http://127.0.0.1:{port}/jobs", files={"archive": (archive.name, body, "application/zip")},
            data={"params": PARAMS}, timeout=600,
        )
    return time.perf_counter() - started, response


def health_while(busy: threading.Thread, port: int) -> list[float]:
    """Seconds per GET /health, one every 50 ms while `busy` runs: is the event loop free?"""
    latencies = []
    with httpx.Client(timeout=60) as client:
        while busy.is_alive():
            started = time.perf_counter()
            client.get(f"http://127.0.0.1:{port}/health")
            latencies.append(time.perf_counter() - started)
            time.sleep(0.05)
    return sorted(latencies) or [0.0]


def upload_once(tree: Path, archive: Path, database_url: str, profile: Path | None) -> dict[str, object]:
    """One fresh API process, one POST: seconds to the answer and the process's memory."""
    with tempfile.TemporaryDirectory(dir=OUT) as data_dir:
        port = free_port()
        api = start_api(tree, api_env(tree, Path(data_dir), database_url), port)
        spy = None
        try:
            rss_idle = proc_mb(api.pid, "VmRSS")
            if profile is not None:
                spy = subprocess.Popen(
                    [str(PY_SPY), "record", "-p", str(api.pid), "-r", "200", "-f", "raw",
                     "-o", str(profile), "--nonblocking"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
                time.sleep(1.0)  # py-spy attaches
            answer: list[tuple[float, httpx.Response]] = []
            upload = threading.Thread(target=lambda: answer.append(post(port, archive)))
            upload.start()
            # not while profiling: the samples are to show the upload alone
            health = health_while(upload, port) if profile is None else [0.0]
            upload.join()
            seconds, response = answer[0]
            peak = proc_mb(api.pid, "VmHWM")
        finally:
            if spy is not None:
                spy.send_signal(2)  # SIGINT: py-spy writes what it has and exits
                spy.wait(timeout=60)
            stop_process_group(api)
    body = response.json()
    return {
        "status": response.status_code, "seconds_to_answer": round(seconds, 3),
        "n_images": body.get("counts", {}).get("images"), "rss_idle_mb": round(rss_idle, 1),
        "rss_peak_mb": round(peak, 1), "health_p50_ms": round(health[len(health) // 2] * 1000, 1),
        "health_max_ms": round(health[-1] * 1000, 1),
    }


def steps(profile: Path) -> dict[str, float | int]:
    """Share of the API's non-idle samples per intake step (leaf-first match, see STEPS)."""
    counts: Counter[str] = Counter()
    for line in profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")[::-1]
        step = next(
            (name for frame in frames for name, marks in STEPS if any(m in frame for m in marks)),
            "other (event loop, HTTP, framework)",
        )
        counts[step] += int(count)
    total = sum(counts.values()) or 1
    return {"samples": total, **{step: round(n / total, 3) for step, n in counts.most_common()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 70_000])
    parser.add_argument("--base", help="also measure this commit's tree (the 'before')")
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgres"])
    parser.add_argument("--profile", choices=["sqlite", "postgres"], help="one py-spy pass per tree, largest size")
    parser.add_argument("--out", type=Path, default=Path("bench/results/upload.json"))
    args = parser.parse_args()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    trees = {"head": Path.cwd()}
    if args.base:
        trees = {f"base-{args.base}": source_tree(args.base), **trees}
    archives = {n: mnist_zip(n) for n in args.sizes}
    out: dict[str, object] = {
        "machine": f"{os.cpu_count()} CPUs ({cpu_model()}), loopback, shared with other work",
        "commit": head.stdout.strip(), "base": args.base, "params": PARAMS,
        "archives_mb": {n: round(p.stat().st_size / 1e6, 1) for n, p in archives.items()},
        "runs": [],
    }
    # One database per tree: each tree migrates its own to the schema it knows.
    databases = {label: fresh_database() for label in trees}
    try:
        for n, archive in archives.items():
            for backend in args.backends:
                for label, tree in trees.items():
                    url = databases[label][1] if backend == "postgres" else ""
                    # other engineers share the two cores: the load says how noisy a row is
                    run = {"tree": label, "backend": backend, "images": n,
                           "load_1min": round(os.getloadavg()[0], 1),
                           **upload_once(tree, archive, url, None)}
                    print(json.dumps(run), flush=True)
                    out["runs"].append(run)  # type: ignore[attr-defined]
        if args.profile:
            largest = archives[max(archives)]
            out["profile"] = {}
            for label, tree in trees.items():
                raw = OUT / f"profile-{label}.txt"
                upload_once(tree, largest, databases[label][1] if args.profile == "postgres" else "", raw)
                out["profile"][label] = steps(raw)  # type: ignore[index]
                print(label, json.dumps(out["profile"][label], indent=1), flush=True)  # type: ignore[index]
    finally:
        for name, _ in databases.values():
            drop_database(name)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

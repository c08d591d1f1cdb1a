"""Issue 4's service targets, measured on this machine against local Postgres:

- a 200 MB archive upload: API RSS growth (target < 50 MB);
- a 70,000-image job: the assignment write (store.results.write_results, synthetic labels);
- that job's `GET /jobs/{id}/clusters` p50/p99 and the full CSV export stream time;
- `corral demo`: from `corral serve` start to the finished 1,797-image k-means job.

    python -m bench.service --out bench/results/service.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psycopg
from PIL import Image as PILImage

import migrations
from commands.ports import free_port
from commands.serve import stop_process_group
from store import jobs, results
from store.db import make_engine, make_sessionmaker, transaction
from store.models import JobState
from store.settings import Settings

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


@dataclass(frozen=True)
class Synthetic:
    path: str
    blob_name: str
    blob_offset: int | None = None
    size_bytes: int = 100
    width: int = 16
    height: int = 16
    format: str = "PNG"


def fresh_database() -> tuple[str, str]:
    name = f"corral_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return name, f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def drop_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def write_big_job(settings: Settings, n: int, k: int) -> tuple[uuid.UUID, float]:
    sessions = make_sessionmaker(make_engine(settings))
    job_id = uuid.uuid4()
    records = [Synthetic(f"class{i % k}/{i:06d}.png", f"{i:06d}.png") for i in range(n)]
    with transaction(sessions) as session:
        jobs.create_job(
            session, job_id=job_id, params={"k": k, "method": "kmeans"}, archive_format="zip",
            archive_entries=n, images=records, skipped=[],
        )
    rng = np.random.default_rng(0)
    labels, confidences = rng.integers(0, k, n), rng.random(n)
    with transaction(sessions) as session:
        # the worker holds the job's image rows from decoding; only the write itself is timed
        images = jobs.list_images(session, job_id=job_id)
        started = time.perf_counter()
        results.write_results(
            session, job_id=job_id, images=images, labels=labels.tolist(),
            confidences=confidences.tolist(), k=k,
        )
    write_s = time.perf_counter() - started
    with transaction(sessions) as session:
        jobs.finish_job(
            session, job_id=job_id, worker_id=None, state=JobState.SUCCEEDED, n_clustered=n
        )
    return job_id, write_s


def noise_zip(path: Path, total_bytes: int) -> int:
    """Stored (uncompressed) zip of one 256x256 noise PNG repeated up to `total_bytes`."""
    pixels = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format="PNG")
    png = buffer.getvalue()
    count = total_bytes // len(png) + 1
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for i in range(count):
            archive.writestr(f"noise/{i:05d}.png", png)
    return count


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_api(env: dict[str, str], port: int, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """`corral api` (from the source tree `cwd`, default this one), once /health answers."""
    process = subprocess.Popen(
        [sys.executable, "-m", commands_module(cwd or Path.cwd()), "api", "--port", str(port)], cwd=cwd,
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    if not healthy(port):
        raise RuntimeError("API did not start")
    return process


def commands_module(tree: Path) -> str:
    """The module that runs `corral`'s service commands in `tree` (before the redesign: worker.cli)."""
    return "commands" if (tree / "commands").is_dir() else "worker.cli"


def healthy(port: int, within_s: float = 60) -> bool:
    """Whether GET /health on the local `port` answers 200 within `within_s`."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            time.sleep(0.2)
    return False


def measure_upload(base: str, pid: int, archive: Path) -> dict[str, float]:
    baseline, peak, done = rss_mb(pid), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb(pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    with archive.open("rb") as body:
        response = httpx.post(
            f"{base}/jobs", files={"archive": ("big.zip", body, "application/zip")},
            data={"params": '{"k": 2, "method": "kmeans"}'}, timeout=600,
        )
    elapsed = time.perf_counter() - started
    done.set()
    sampler.join()
    return {
        "archive_mb": archive.stat().st_size / 1024**2, "status": response.status_code,
        "seconds": elapsed, "rss_baseline_mb": baseline, "rss_peak_mb": peak[0],
        "rss_growth_mb": peak[0] - baseline,
    }


def measure_reads(base: str, job_id: uuid.UUID, requests: int) -> dict[str, float]:
    latencies = []
    with httpx.Client(base_url=base, timeout=60) as client:
        for _ in range(requests):
            started = time.perf_counter()
            assert client.get(f"/jobs/{job_id}/clusters").status_code == 200
            latencies.append(time.perf_counter() - started)
        started = time.perf_counter()
        lines = 0
        with client.stream("GET", f"/jobs/{job_id}/assignments", params={"format": "csv"}) as r:
            for chunk in r.iter_lines():
                lines += 1 if chunk else 0
        csv_s = time.perf_counter() - started
    latencies.sort()
    return {
        "clusters_requests": requests, "clusters_p50_ms": statistics.median(latencies) * 1000,
        "clusters_p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1000,
        "csv_seconds": csv_s, "csv_lines": lines,
    }


def measure_demo(tmp: Path) -> dict[str, float]:
    env = {**os.environ, "CORRAL_DATA_DIR": str(tmp / "demo"), "CORRAL_DATABASE_URL": "",
           "CORRAL_BROKER_URL": "filesystem://"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "commands", "demo"], env=env, timeout=900)
    return {"seconds": time.perf_counter() - started, "exit_code": done.returncode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=70_000)
    parser.add_argument("--upload-mb", type=int, default=200)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("bench/results/service.json"))
    args = parser.parse_args()
    name, url = fresh_database()
    out: dict[str, object] = {"machine": f"{os.cpu_count()} CPUs, loopback, local Postgres"}
    try:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            settings = Settings(database_url=url, data_dir=tmp / "data")
            migrations.upgrade(settings)
            job_id, write_s = write_big_job(settings, args.images, 10)
            out["assignment_write"] = {"images": args.images, "seconds": write_s}
            env = {**os.environ, "CORRAL_DATABASE_URL": url, "CORRAL_DATA_DIR": str(tmp / "data"),
                   "CORRAL_BROKER_URL": "filesystem://", "CORRAL_LOG_LEVEL": "WARNING"}
            port = free_port()
            api = start_api(env, port)
            try:
                base = f"http://127.0.0.1:{port}"
                out["reads"] = measure_reads(base, job_id, args.requests)
                archive = tmp / "big.zip"
                noise_zip(archive, args.upload_mb * 1024**2)
                out["upload"] = measure_upload(base, api.pid, archive)
            finally:
                stop_process_group(api)
            out["demo_serve_to_kmeans_done"] = measure_demo(tmp)
    finally:
        drop_database(name)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

"""Load on loopback against the Postgres + Redis deployment run locally (issue 5):
20 concurrent uploads of small archives plus 200 GET requests per second for 60 s.

Reports 5xx count (target 0), whether every job is accounted for (reaches a finished state),
p50/p99 latency per endpoint and the API's peak RSS. Traffic goes to 127.0.0.1 only, the request
count and the duration are bounded, and it stops by itself.

    python -m bench.load --duration 60 --out bench/results/load.json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

import migrations
from bench.service import drop_database, fresh_database, rss_mb, start_api
from commands.ports import free_port
from commands.serve import stop_process_group
from store.settings import Settings

FINISHED = {"succeeded", "failed", "cancelled"}


def small_archive(seed: int) -> bytes:
    """30 PNGs of 16 px in three colour folders."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for label, colour in enumerate([(220, 30, 30), (30, 220, 30), (30, 30, 220)]):
            for i in range(10):
                pixels = np.clip(np.array(colour) + rng.normal(0, 15, (16, 16, 3)), 0, 255).astype(np.uint8)
                png = io.BytesIO()
                Image.fromarray(pixels).save(png, format="PNG")
                archive.writestr(f"class{label}/{i:02d}.png", png.getvalue())
    return buffer.getvalue()


class Recorder:
    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.statuses: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self.errors: dict[str, int] = defaultdict(int)

    async def call(
        self, client: httpx.AsyncClient, name: str, method: str, url: str, **kw: object
    ) -> httpx.Response | None:
        started = time.perf_counter()
        try:
            response = await client.request(method, url, **kw)  # type: ignore[arg-type]
        except httpx.HTTPError:
            self.errors[name] += 1
            return None
        self.latencies[name].append(time.perf_counter() - started)
        self.statuses[name][response.status_code] += 1
        return response

    def summary(self) -> dict[str, object]:
        endpoints = {}
        for name, values in self.latencies.items():
            ordered = sorted(values)
            endpoints[name] = {
                "requests": len(ordered), "p50_ms": statistics.median(ordered) * 1000,
                "p99_ms": ordered[int(0.99 * (len(ordered) - 1))] * 1000,
                "statuses": dict(self.statuses[name]), "connection_errors": self.errors[name],
            }
        five_xx = sum(n for codes in self.statuses.values() for code, n in codes.items() if code >= 500)
        return {"endpoints": endpoints, "5xx": five_xx, "connection_errors": sum(self.errors.values())}


async def run_load(base: str, uploads: int, rate: float, duration: float) -> tuple[Recorder, list[str]]:
    recorder, job_ids = Recorder(), []
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:

        async def upload(i: int) -> None:
            files = {"archive": (f"set{i}.zip", small_archive(i), "application/zip")}
            response = await recorder.call(client, "POST /jobs", "POST", "/jobs", files=files,
                                           data={"params": json.dumps({"k": 3, "method": "kmeans"})})
            if response is not None and response.status_code == 202:
                job_ids.append(response.json()["id"])

        async def reader(i: int) -> None:
            choice = i % 4
            if choice == 0 or not job_ids:
                await recorder.call(client, "GET /jobs", "GET", "/jobs?limit=20")
            elif choice == 1:
                await recorder.call(client, "GET /jobs/{id}", "GET", f"/jobs/{job_ids[i % len(job_ids)]}")
            elif choice == 2:
                await recorder.call(client, "GET /jobs/{id}/clusters", "GET",
                                    f"/jobs/{job_ids[i % len(job_ids)]}/clusters")
            else:
                await recorder.call(client, "GET /health", "GET", "/health")

        tasks = [asyncio.create_task(upload(i)) for i in range(uploads)]
        started, total = time.perf_counter(), int(rate * duration)
        for i in range(total):  # paced: request i starts at i / rate seconds
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(reader(i)))
        await asyncio.gather(*tasks)
    return recorder, job_ids


def wait_for_jobs(base: str, job_ids: list[str], timeout: float) -> dict[str, int]:
    deadline, states = time.monotonic() + timeout, {}
    with httpx.Client(base_url=base, timeout=30) as client:
        while time.monotonic() < deadline:
            states = {job: client.get(f"/jobs/{job}").json().get("state", "missing") for job in job_ids}
            if all(state in FINISHED for state in states.values()):
                break
            time.sleep(2)
    counts: dict[str, int] = defaultdict(int)
    for state in states.values():
        counts[state] += 1
    return dict(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=20)
    parser.add_argument("--rate", type=float, default=200.0, help="GET requests per second")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--redis-db", type=int, default=12)
    parser.add_argument("--out", type=Path, default=Path("bench/results/load.json"))
    args = parser.parse_args()
    name, url = fresh_database()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            broker = f"redis://127.0.0.1:6379/{args.redis_db}"
            settings = Settings(database_url=url, data_dir=Path(tmp) / "data", broker_url=broker)
            migrations.upgrade(settings)
            env = {**os.environ, "CORRAL_DATABASE_URL": url, "CORRAL_DATA_DIR": str(Path(tmp) / "data"),
                   "CORRAL_BROKER_URL": broker, "CORRAL_LOG_LEVEL": "WARNING",
                   "CORRAL_MAX_ACTIVE_JOBS_PER_KEY": "1000"}
            port = free_port()
            api = start_api(env, port)
            worker = subprocess.Popen([sys.executable, "-m", "commands", "worker"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            peak, done = [rss_mb(api.pid)], threading.Event()

            def sample() -> None:
                while not done.is_set():
                    peak[0] = max(peak[0], rss_mb(api.pid))
                    time.sleep(0.1)

            threading.Thread(target=sample, daemon=True).start()
            try:
                base = f"http://127.0.0.1:{port}"
                started = time.perf_counter()
                recorder, job_ids = asyncio.run(run_load(base, args.uploads, args.rate, args.duration))
                load_seconds = time.perf_counter() - started
                jobs = wait_for_jobs(base, job_ids, timeout=600)
            finally:
                done.set()
                stop_process_group(worker)
                stop_process_group(api)
    finally:
        drop_database(name)
    report = {
        "setup": "API + 1 worker, Postgres + Redis on loopback, 2 CPUs", "uploads": args.uploads,
        "get_rate_per_s": args.rate, "duration_s": args.duration, "load_seconds": load_seconds,
        **recorder.summary(), "jobs_accepted": len(job_ids), "jobs_by_state": jobs,
        "all_jobs_succeeded": jobs.get("succeeded", 0) == len(job_ids) == args.uploads,
        "api_peak_rss_mb": peak[0],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

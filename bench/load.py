"""Open-loop load on loopback against the API and one worker that is training meanwhile (issue 15).

The GETs are offered at a fixed rate: request i is due at i / rate seconds and its latency is
measured from that due time, so a slow answer cannot hold back the requests after it (no
coordinated omission) and the client never queues behind its own connection pool (unbounded).
One MMDC job trains on the worker for the whole run; 20 small uploads go in at the start.
Reports p50/p99 per endpoint, 5xx, the client's own lag and the API's peak RSS. `--search`
then looks for the highest rate whose worst endpoint p99 stays under `--p99-ms`.

    python -m bench.load --rate 200 --duration 60 --out bench/results/load.json
    python -m bench.load --search --trial 15 --out bench/results/load-search.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

import migrations
from bench.api_throughput import commit, machine, seed
from bench.load_client import Offered, offer, small_archive, summary
from bench.service import drop_database, fresh_database, rss_mb, start_api
from store.settings import Settings
from worker.cli import free_port, stop_process_group

FINISHED = {"succeeded", "failed", "cancelled"}
# Small enough that an epoch (where a cancel takes effect) is short on a busy CPU.
TRAINING = {"k": 3, "method": "mmdc", "epochs": 10_000, "image_size": 16}  # cancelled at the end


def start_training(client: httpx.Client) -> str:
    """Submit the MMDC job and wait until the worker runs it."""
    files = {"archive": ("train.zip", small_archive(99, per_class=20), "application/zip")}
    response = client.post("/jobs", files=files, data={"params": json.dumps(TRAINING)})
    response.raise_for_status()
    job_id: str = response.json()["id"]
    deadline = time.monotonic() + 120
    while client.get(f"/jobs/{job_id}").json()["state"] != "running":
        if time.monotonic() > deadline:
            raise RuntimeError("the training job did not start")
        time.sleep(0.5)
    return job_id


def run(base: str, rate: float, duration: float, uploads: int, finished: str) -> Offered:
    return asyncio.run(offer(base, rate=rate, duration=duration, uploads=uploads, finished=finished))


def search(base: str, args: argparse.Namespace, finished: str) -> dict[str, object]:
    """Doubling from `--rate` until p99 breaks, then bisection: `--steps` trials at most."""
    trials: list[dict[str, object]] = []
    good, bad, rate = 0.0, None, args.rate
    for _ in range(args.steps):
        result = summary(run(base, rate, args.trial, 0, finished))
        holds = result["worst_get_p99_ms"] < args.p99_ms and result["5xx"] == 0  # type: ignore[operator]
        trials.append({"rate": rate, "holds": holds, **result})
        print(json.dumps({"rate": rate, "holds": holds, "worst_p99_ms": result["worst_get_p99_ms"]}))
        if holds:
            good = rate
        else:
            bad = rate
        rate = rate * 2 if bad is None else (good + bad) / 2
    return {"p99_target_ms": args.p99_ms, "trial_s": args.trial, "highest_rate_holding": good,
            "lowest_rate_failing": bad, "trials": trials}


def wait_for_jobs(client: httpx.Client, job_ids: list[str], timeout: float) -> dict[str, int]:
    deadline, states = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        states = {job: client.get(f"/jobs/{job}").json().get("state", "missing") for job in job_ids}
        if all(state in FINISHED for state in states.values()):
            break
        time.sleep(2)
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=20)
    parser.add_argument("--rate", type=float, default=200.0, help="GET requests per second")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--search", action="store_true", help="find the highest rate that holds")
    parser.add_argument("--trial", type=float, default=15.0, help="seconds per search trial")
    parser.add_argument("--steps", type=int, default=6, help="search trials")
    parser.add_argument("--p99-ms", type=float, default=100.0)
    parser.add_argument("--redis-db", type=int, default=12)
    parser.add_argument("--out", type=Path, default=Path("bench/results/load.json"))
    args = parser.parse_args()
    name, url = fresh_database()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            report = measure(args, url, Path(tmp) / "data")
    finally:
        drop_database(name)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k not in ("trials",)}, indent=2))


def measure(args: argparse.Namespace, url: str, data_dir: Path) -> dict[str, object]:
    broker = f"redis://127.0.0.1:6379/{args.redis_db}"
    settings = Settings(database_url=url, data_dir=data_dir, broker_url=broker)
    migrations.upgrade(settings)
    finished = str(seed(settings))  # a succeeded 1,797-image job for /jobs/{id} and /clusters
    env = {**os.environ, "CORRAL_DATABASE_URL": url, "CORRAL_DATA_DIR": str(data_dir),
           "CORRAL_BROKER_URL": broker, "CORRAL_LOG_LEVEL": "WARNING", "CORRAL_DEVICE": "cpu",
           "CORRAL_MAX_ACTIVE_JOBS_PER_KEY": "1000"}
    port = free_port()
    api = start_api(env, port)
    worker = subprocess.Popen([sys.executable, "-m", "worker.cli", "worker"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    peak, done = [rss_mb(api.pid)], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb(api.pid))
            time.sleep(0.1)

    threading.Thread(target=sample, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            training = start_training(client)
            epoch_at_start = client.get(f"/jobs/{training}").json()["progress"]["epoch"]
            uploaded: list[str] = []
            if args.search:
                result: dict[str, object] = search(base, args, finished)
            else:
                offered = run(base, args.rate, args.duration, args.uploads, finished)
                result = {"get_rate_per_s": args.rate, "duration_s": args.duration,
                          "uploads": args.uploads, **summary(offered)}
                uploaded = offered.job_ids
            state = client.get(f"/jobs/{training}").json()
            result["training_job"] = {"state_at_end": state["state"], "epoch_at_start": epoch_at_start,
                                      "epoch_at_end": state["progress"]["epoch"]}
            client.post(f"/jobs/{training}/cancel")  # the uploads' k-means jobs queue behind it
            result["uploads_accepted"] = len(uploaded)
            result["uploads_by_state"] = wait_for_jobs(client, uploaded, timeout=120)
    finally:
        done.set()
        stop_process_group(worker)
        stop_process_group(api)
    return {"setup": "corral api (1 process) + 1 worker training MMDC on CPU, Postgres + Redis on "
            "loopback; the load generator on the same machine", "machine": machine(),
            "commit": commit(), **result, "api_peak_rss_mb": peak[0]}


if __name__ == "__main__":
    main()

"""Issue 15's throughput target: Corral's read routes beside a bare FastAPI + SQLAlchemy peer.

Both apps are served by the same uvicorn command (`--workers N`, `--factory`) from one fresh
Postgres database holding one finished k-means job of 1,797 images (10 clusters) and 19 queued
jobs. wrk (closed loop; `apt-get install wrk`) drives each (endpoint, connections) cell on the
peer and then on Corral, back to back, so each ratio compares two runs seconds apart. Requests/s
count 2xx answers only; a 503 from a saturated Corral is reported, not counted.

    python -m bench.api_throughput --workers 1 --out bench/results/api_throughput_w1.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import migrations
from bench.service import drop_database, fresh_database, healthy, write_big_job
from store import jobs
from store.db import make_engine, make_sessionmaker, transaction
from store.settings import Settings

APPS = {"peer": "bench.peer:create_peer_app", "corral": "api.main:create_app"}
# wrk's Lua `done` hook: one JSON line with the counts and the latency percentiles (µs).
WRK_REPORT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %d, "duration_us": %d, "non2xx": %d, "socket_errors": %d, ' ..
    '"timeouts": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}\\n', summary.requests,
    summary.duration, e.status, e.connect + e.read + e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def seed(settings: Settings) -> uuid.UUID:
    """The finished 1,797-image job the issue measured, plus 19 queued ones for GET /jobs."""
    job_id, _ = write_big_job(settings, 1797, 10)
    engine = make_engine(settings)
    with transaction(make_sessionmaker(engine)) as session:
        for _ in range(19):
            jobs.create_job(session, job_id=uuid.uuid4(), params={"k": 3, "method": "kmeans"},
                            archive_format="zip", archive_entries=0, images=[], skipped=[])
    engine.dispose()
    return job_id


def serve(target: str, port: int, workers: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`uvicorn --factory TARGET --workers N` on loopback; returns once /health answers."""
    command = [sys.executable, "-m", "uvicorn", "--factory", target, "--host", "127.0.0.1",
               "--port", str(port), "--workers", str(workers), "--log-level", "warning"]
    process = subprocess.Popen(command, env=env, start_new_session=True)
    if not healthy(port):
        stop(process)
        raise RuntimeError(f"{target} did not start")
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wrk(url: str, connections: int, seconds: float, script: Path) -> dict[str, float]:
    command = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
               "--timeout", "10s", "-s", str(script), url]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    raw = json.loads(next(line for line in reversed(out.splitlines()) if line.startswith("{")))
    seconds_run = raw["duration_us"] / 1e6
    return {
        "rps_2xx": (raw["requests"] - raw["non2xx"]) / seconds_run, "seconds": seconds_run,
        "requests": raw["requests"],
        "non2xx": raw["non2xx"], "socket_errors": raw["socket_errors"], "timeouts": raw["timeouts"],
        "p50_ms": raw["p50_us"] / 1000, "p99_ms": raw["p99_us"] / 1000, "max_ms": raw["max_us"] / 1000,
    }


def measure(ports: dict[str, int], paths: dict[str, str], levels: list[int], seconds: float,
            rounds: int, script: Path) -> list[dict[str, object]]:
    """Each cell alternates peer and Corral `rounds` times (order flipped every round), so that
    the machine's other load falls on both alike; counts are summed, p99 is the worst round's."""
    cells: list[dict[str, object]] = []
    for name, path in paths.items():
        for connections in levels:
            runs: dict[str, list[dict[str, float]]] = {app: [] for app in ports}
            for round_ in range(rounds):
                order = list(ports.items()) if round_ % 2 == 0 else list(reversed(ports.items()))
                for app, port in order:
                    url = f"http://127.0.0.1:{port}{path}"
                    runs[app].append(wrk(url, connections, seconds / rounds, script))
            cell: dict[str, object] = {"endpoint": name, "connections": connections}
            cell.update({app: combine(app_runs) for app, app_runs in runs.items()})
            peer, corral = runs["peer"], runs["corral"]
            ok = sum(r["rps_2xx"] * r["seconds"] for r in corral) / sum(r["seconds"] for r in corral)
            base = sum(r["rps_2xx"] * r["seconds"] for r in peer) / sum(r["seconds"] for r in peer)
            cell["ratio"] = ok / base if base else None
            print(json.dumps(cell), flush=True)
            cells.append(cell)
    return cells


def combine(runs: list[dict[str, float]]) -> dict[str, float]:
    seconds = sum(r["seconds"] for r in runs)
    return {
        "rps_2xx": sum(r["rps_2xx"] * r["seconds"] for r in runs) / seconds, "seconds": seconds,
        **{key: sum(r[key] for r in runs) for key in ("requests", "non2xx", "socket_errors", "timeouts")},
        "p50_ms": sorted(r["p50_ms"] for r in runs)[len(runs) // 2],
        **{key: max(r[key] for r in runs) for key in ("p99_ms", "max_ms")},
    }


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")
    return f"{os.cpu_count()} CPUs ({model}), loopback, local Postgres"


def commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1, help="uvicorn processes per app")
    parser.add_argument("--connections", default="8,64,256", help="wrk connection counts")
    parser.add_argument("--seconds", type=float, default=6.0, help="per cell and app, all rounds")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of peer and Corral")
    parser.add_argument("--out", type=Path, default=Path("bench/results/api_throughput_w1.json"))
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")
    levels = [int(level) for level in args.connections.split(",")]
    name, url = fresh_database()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(database_url=url, data_dir=Path(tmp) / "data")
            migrations.upgrade(settings)
            job_id = seed(settings)
            script = Path(tmp) / "report.lua"
            script.write_text(WRK_REPORT)
            env = {**os.environ, "CORRAL_DATABASE_URL": url, "CORRAL_DATA_DIR": str(settings.data_dir),
                   "CORRAL_BROKER_URL": "filesystem://", "CORRAL_LOG_LEVEL": "WARNING"}
            ports = {app: 18600 + i for i, app in enumerate(APPS)}
            servers = [serve(APPS[app], port, args.workers, env) for app, port in ports.items()]
            try:
                paths = {"GET /jobs/{id}": f"/jobs/{job_id}",
                         "GET /jobs/{id}/clusters": f"/jobs/{job_id}/clusters", "GET /jobs": "/jobs"}
                for port in ports.values():  # warm both: imports, pools, first queries
                    wrk(f"http://127.0.0.1:{port}/jobs/{job_id}", 8, 1, script)
                cells = measure(ports, paths, levels, args.seconds, args.rounds, script)
            finally:
                for server in servers:
                    stop(server)
    finally:
        drop_database(name)
    report = {"machine": machine(), "commit": commit(), "workers": args.workers,
              "seconds_per_cell": args.seconds, "rounds": args.rounds,
              "tool": "wrk, closed loop, 2 threads", "cells": cells,
              "min_ratio": min(c["ratio"] for c in cells if isinstance(c["ratio"], float))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "cells"}, indent=2))


if __name__ == "__main__":
    main()

"""`corral api --workers N`: N uvicorn processes behind one port, stopped together by SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from commands.ports import free_port
from tests.commands.conftest import ROOT, command_env, run_command


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_api_with_two_workers_serves_from_two_processes_and_stops_on_sigterm(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    assert run_command(["migrate"], data_dir).returncode == 0
    port = free_port()
    with (tmp_path / "api.log").open("wb") as log:
        api = subprocess.Popen(
            [sys.executable, "-m", "commands", "api", "--port", str(port), "--workers", "2"],
            cwd=ROOT, env=command_env(data_dir), stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert api.poll() is None and time.monotonic() < deadline, "corral api did not start"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        workers = [pid for pid in children(api.pid) if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(workers) == 2, children(api.pid)
        for _ in range(10):
            assert httpx.get(f"http://127.0.0.1:{port}/jobs", timeout=5).status_code == 200
        api.send_signal(signal.SIGTERM)
        assert api.wait(timeout=60) == 0
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    finally:
        if api.poll() is None:
            api.kill()
            api.wait()

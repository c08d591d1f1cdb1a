"""Helpers for tests that run the real service commands as processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def command_env(data_dir: Path, **env: str) -> dict[str, str]:
    """This environment without any CORRAL_* setting, plus the data folder and `env`."""
    environ = {key: value for key, value in os.environ.items() if not key.startswith("CORRAL_")}
    environ.update(PYTHONPATH=str(ROOT), CORRAL_DATA_DIR=str(data_dir), **env)
    return environ


def run_command(args: list[str], data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m commands ARGS` (what `corral ARGS` runs) to its end."""
    return subprocess.run(
        [sys.executable, "-m", "commands", *args],
        cwd=ROOT, env=command_env(data_dir, **env), capture_output=True, text=True, timeout=120,
    )

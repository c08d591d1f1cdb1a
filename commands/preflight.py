"""What a command checks before it starts anything: each misconfiguration is one line.

A missing database, a broker that is down, a port in use or a data folder that cannot be written
would otherwise surface as a long traceback from deep inside SQLAlchemy, kombu or uvicorn, after
a worker was already started. Each check here raises `Misconfigured` with a message that names
the setting to fix; `guarded` prints it as `corral <command>: <message>` and exits non-zero.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import make_url, text
from sqlalchemy.exc import SQLAlchemyError

import migrations
from store import queue
from store.db import make_engine
from store.settings import Settings

EX_CONFIG = 78  # sysexits.h: a supervisor can tell a configuration error from a crash

Command = Callable[[argparse.Namespace], int]


class Misconfigured(Exception):
    """A setting keeps the command from starting; the message names it and the fix."""


def guarded(command: Command) -> Command:
    """`command`, with a Misconfigured turned into one line on stderr and exit status 78."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except Misconfigured as error:
            print(f"corral {args.command}: {error}", file=sys.stderr)
            return EX_CONFIG

    return run


def check_data_dir(settings: Settings) -> None:
    """The data folder can be created and written; the folders this check made are removed again."""
    folder = settings.data_dir
    made = list(itertools.takewhile(lambda path: not path.exists(), (folder, *folder.parents)))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise Misconfigured(
            f"cannot write to the data folder CORRAL_DATA_DIR={folder} ({_os_reason(error)}); "
            "set CORRAL_DATA_DIR to a folder this user can write"
        ) from None
    finally:
        for path in made:  # deepest first
            with contextlib.suppress(OSError):
                path.rmdir()


def check_database(settings: Settings, *, migrated: bool = False) -> None:
    """One `SELECT 1` through the service's own engine; with `migrated`, the schema must also be
    this release's (`corral api` and `corral worker` do not migrate, `serve` and `migrate` do)."""
    if migrated and settings.is_sqlite and not Path(make_url(settings.database_url).database or "").exists():
        raise _not_migrated(settings, None)  # connecting would create an empty file
    try:
        engine = make_engine(settings, pooled=False)
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
                current = MigrationContext.configure(connection).get_current_revision()
        finally:
            engine.dispose()
    except SQLAlchemyError as error:
        raise Misconfigured(
            f"cannot reach the database at CORRAL_DATABASE_URL={shown_database_url(settings)} "
            f"({reason(error)}); set CORRAL_DATABASE_URL to a database that exists and accepts connections"
        ) from None
    if migrated and current not in ScriptDirectory.from_config(migrations.alembic_config(settings)).get_heads():
        raise _not_migrated(settings, current)


def _not_migrated(settings: Settings, current: str | None) -> Misconfigured:
    return Misconfigured(
        f"the database at CORRAL_DATABASE_URL={shown_database_url(settings)} has "
        f"{f'schema revision {current}' if current else 'no Corral schema'}, not this release's; "
        "run `corral migrate` first (or set CORRAL_DATABASE_URL to a migrated database)"
    )


def check_broker(settings: Settings) -> None:
    if settings.is_filesystem_broker:
        return  # folders under the data folder, which check_data_dir covers; connecting makes them
    error = queue.broker_error(settings)
    if error is not None:
        raise Misconfigured(
            f"cannot reach the broker at CORRAL_BROKER_URL={queue.shown_broker_url(settings)} ({error}); "
            "set CORRAL_BROKER_URL to a running Redis (or filesystem:// on one machine)"
        )


def check_port(host: str, port: int) -> None:
    """Bind and release the address as uvicorn will (its family rule, SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as error:
        raise Misconfigured(
            f"cannot listen on {host}:{port} ({_os_reason(error)}); "
            "pass a free --port, or a --host of this machine"
        ) from None


def _os_reason(error: OSError) -> str:
    return (error.strerror or str(error)).lower()


def shown_database_url(settings: Settings) -> str:
    try:
        return make_url(settings.database_url).render_as_string(hide_password=True)
    except SQLAlchemyError:
        return settings.database_url.split("@")[-1]  # unparseable: never echo what may be a password


def reason(error: BaseException) -> str:
    """The driver's own words on one line: `connection refused`, `database "x" does not exist`."""
    cause = getattr(error, "orig", None) or error
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    first = lines[0] if lines else type(cause).__name__
    first = first.rsplit(" failed: ", 1)[-1]  # libpq: `connection to server at ... failed: <why>`
    first = first.removeprefix("FATAL:").strip().rstrip(".")
    # It reads mid-sentence: lower-case a capitalised word (`Connection refused`), not an acronym.
    return first[:1].lower() + first[1:] if first[1:2].islower() else first

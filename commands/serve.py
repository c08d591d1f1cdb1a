"""`corral serve`: the embedded default, the schema upgraded, one local worker and the API.

Every check runs before anything starts, so a misconfiguration leaves no worker behind.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

from commands.api import add_listen_options, check_api, serve_http
from commands.logs import configure_logging
from commands.migrate import upgrade
from commands.preflight import guarded
from store.settings import get_settings

STOP_GRACE_S = 10.0  # how long `serve` waits for the worker to stop before killing it


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("serve", help="API + one local worker (embedded default)")
    add_listen_options(parser)
    parser.set_defaults(func=guarded(run))


def run(args: argparse.Namespace) -> int:
    """Migrate, start one worker process, run the API here; stop both on Ctrl-C or SIGTERM."""
    settings = get_settings()
    # The worker needs the same data folder, broker and database; the schema is upgraded next.
    check_api(settings, args.host, args.port, migrated=False)
    configure_logging(settings)  # after the checks: a misconfiguration is their one line only
    upgrade(settings)
    # Own session: Ctrl-C in the terminal reaches only us, and we stop the worker in order.
    worker = subprocess.Popen([sys.executable, "-m", "commands", "worker"], start_new_session=True)
    # uvicorn shuts down on SIGTERM and then raises it again; with the default action that kills
    # this process before `finally` and orphans the worker. Exiting normally runs it.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        serve_http(args.host, args.port)
    finally:
        stop_process_group(worker)
    return 0


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def stop_process_group(process: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM (Celery's warm shutdown), then SIGQUIT (cold), then SIGKILL the whole group.

    A job cut off here keeps its checkpoint; the reaper requeues it on the next start.
    """
    for sig in (signal.SIGTERM, signal.SIGQUIT, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace_s / 2)
            return
        except subprocess.TimeoutExpired:
            continue

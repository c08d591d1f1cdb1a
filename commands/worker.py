"""`corral worker`: Celery workers that run jobs, with the reaper that requeues lost ones.

By default one process trains (the job queue, `--concurrency` at once) and a companion process
runs re-clusterings (their own queue, one at a time), so a re-clustering never waits behind a
training job. `--role` runs either alone.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import subprocess
import sys

from commands.logs import configure_logging
from commands.preflight import check_broker, check_data_dir, check_database, guarded
from store.settings import Settings, get_settings

ROLES = ("all", "training", "recluster")
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a child gets when its parent dies
STOP_GRACE_S = 10.0


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("worker", help="Celery workers that run jobs and re-clusterings")
    parser.add_argument("--concurrency", type=int, default=1, help="training jobs run at once")
    parser.add_argument(
        "--role", choices=ROLES, default="all",
        help="all (default): training here and re-clusterings in a companion process; "
        "training or recluster: only that queue",
    )
    parser.set_defaults(func=guarded(run))


def run(args: argparse.Namespace) -> int:
    from store.db import make_engine, make_sessionmaker
    from worker.app import create_celery_app
    from worker.reaper import start_reaper

    settings = get_settings()
    check_data_dir(settings)
    check_broker(settings)  # first: an embedded SQLite database is created by connecting to it
    check_database(settings, migrated=True)
    configure_logging(settings)  # after the checks: a misconfiguration is their one line only
    recluster = args.role == "recluster"
    app = create_celery_app(settings, recluster=recluster)
    # NullPool: the reaper runs in the process that forks job children; keep no open socket.
    sessions = make_sessionmaker(make_engine(settings, pooled=False))
    start_reaper(sessions, settings, app)
    companion = _start_companion() if args.role == "all" else None
    try:
        app.worker_main(_celery_argv(settings, concurrency=1 if recluster else args.concurrency,
                                     queue=settings.recluster_queue_name if recluster else settings.queue_name,
                                     name="recluster" if recluster else "corral"))
    finally:
        if companion is not None:
            _stop(companion)
    return 0


def _celery_argv(settings: Settings, *, concurrency: int, queue: str, name: str) -> list[str]:
    return [
        "worker",
        f"--concurrency={concurrency}",
        "--pool=prefork",
        f"--queues={queue}",
        f"--hostname={name}-{os.getpid()}@%h",
        f"--loglevel={settings.log_level}",
        "--without-gossip",
        "--without-mingle",
    ]


def _start_companion() -> subprocess.Popen[bytes]:
    """The re-clustering worker, in this process group (so `corral serve` stops it with us)."""
    return subprocess.Popen(
        [sys.executable, "-m", "commands", "worker", "--role", "recluster"],
        preexec_fn=_die_with_parent,
    )


def _die_with_parent() -> None:
    """A SIGKILLed parent must not leave the companion consuming on its own."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: run()'s finally still stops it
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Celery's warm shutdown (SIGTERM), then SIGKILL after the grace period."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()

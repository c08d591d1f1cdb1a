"""`corral worker`: a Celery worker that runs jobs, with the reaper that requeues lost ones."""

from __future__ import annotations

import argparse
import os

from commands.logs import configure_logging
from commands.preflight import check_broker, check_data_dir, check_database, guarded
from store.settings import get_settings


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("worker", help="a Celery worker that runs jobs")
    parser.add_argument("--concurrency", type=int, default=1, help="jobs run at once")
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
    app = create_celery_app(settings)
    # NullPool: the reaper runs in the process that forks job children; keep no open socket.
    sessions = make_sessionmaker(make_engine(settings, pooled=False))
    start_reaper(sessions, settings, app)
    argv = [
        "worker",
        f"--concurrency={args.concurrency}",
        "--pool=prefork",
        f"--queues={settings.queue_name}",
        f"--hostname=corral-{os.getpid()}@%h",
        f"--loglevel={settings.log_level}",
        "--without-gossip",
        "--without-mingle",
    ]
    app.worker_main(argv)
    return 0

"""Service subcommands of `corral`: serve, api, worker, migrate, keys, demo.

`core.cli` finds `register` through the `corral.commands` entry point; `python -m worker.cli`
runs the same commands without it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence

from store.settings import Settings, get_settings

log = logging.getLogger(__name__)

STOP_GRACE_S = 10.0  # how long `serve` waits for the worker to stop before killing it


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the service subcommands to `corral`'s parser."""
    serve = subparsers.add_parser("serve", help="API + one local worker (embedded default)")
    _host_port(serve)
    serve.set_defaults(func=cmd_serve)

    api = subparsers.add_parser("api", help="the HTTP API only")
    _host_port(api)
    api.add_argument("--workers", type=int, default=1, help="API processes (uvicorn workers)")
    api.set_defaults(func=cmd_api)

    worker = subparsers.add_parser("worker", help="a Celery worker that runs jobs")
    worker.add_argument("--concurrency", type=int, default=1, help="jobs run at once")
    worker.set_defaults(func=cmd_worker)

    migrate = subparsers.add_parser("migrate", help="upgrade the database schema")
    migrate.set_defaults(func=cmd_migrate)

    keys = subparsers.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key and print it (shown once)")
    create.add_argument("name")
    create.set_defaults(func=cmd_keys_create)

    demo = subparsers.add_parser("demo", help="cluster scikit-learn's 1,797 handwritten digits")
    demo.add_argument("--server", help="URL of a running Corral (default: start one)")
    demo.add_argument(
        "--mmdc-epochs",
        type=int,
        default=0,
        help="also run MMDC for this many epochs (0 = k-means only)",
    )
    demo.set_defaults(func=cmd_demo)


def _host_port(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)


def _logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def cmd_migrate(args: argparse.Namespace) -> int:
    import migrations

    settings = get_settings()
    _logging(settings)
    migrations.upgrade(settings)
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from api.main import create_app

    settings = get_settings()
    _logging(settings)
    workers = getattr(args, "workers", 1)  # `serve` runs one
    if workers > 1:  # each process builds its own app (engine, pool, seats) from the environment
        uvicorn.run("api.main:create_app", factory=True, workers=workers, host=args.host,
                    port=args.port, log_level="info")
        return 0
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from store.db import make_engine, make_sessionmaker
    from worker.app import create_celery_app
    from worker.reaper import start_reaper

    settings = get_settings()
    _logging(settings)
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


def cmd_serve(args: argparse.Namespace) -> int:
    """Migrate, start one worker process, run the API here; stop both on Ctrl-C or SIGTERM."""
    import migrations

    settings = get_settings()
    _logging(settings)
    migrations.upgrade(settings)
    # Own session: Ctrl-C in the terminal reaches only us, and we stop the worker in order.
    worker = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "worker"], start_new_session=True
    )
    # uvicorn shuts down on SIGTERM and then raises it again; with the default action that kills
    # this process before `finally` and orphans the worker. Exiting normally runs it.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        return cmd_api(args)
    finally:
        stop_process_group(worker)


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


def cmd_keys_create(args: argparse.Namespace) -> int:
    from store import keys
    from store.db import make_engine, make_sessionmaker, transaction

    settings = get_settings()
    with transaction(make_sessionmaker(make_engine(settings))) as session:
        row, plain = keys.create_key(session, name=args.name)
    print(f"API key {row.name!r} ({row.id}); shown once, store it now:")
    print(plain)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from worker.demo import run_demo

    return run_demo(server=args.server, mmdc_epochs=args.mmdc_epochs)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="corral")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

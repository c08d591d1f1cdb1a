"""`corral api`: the HTTP API only, in one or more uvicorn processes."""

from __future__ import annotations

import argparse

from commands.logs import configure_logging
from commands.preflight import check_broker, check_data_dir, check_database, check_port, guarded
from store.settings import Settings, get_settings

APP_FACTORY = "api.main:create_app"  # an import string: each of --workers N processes builds its own app


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("api", help="the HTTP API only")
    add_listen_options(parser)
    parser.add_argument(
        "--workers", type=_at_least_one, default=1, help="uvicorn processes sharing the port (default 1)"
    )
    parser.set_defaults(func=guarded(run))


def add_listen_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    check_api(settings, args.host, args.port)
    configure_logging(settings)  # after the checks: a misconfiguration is their one line only
    serve_http(args.host, args.port, workers=args.workers)
    return 0


def check_api(settings: Settings, host: str, port: int, *, migrated: bool = True) -> None:
    """Everything the API needs, checked before it starts: port, data folder, broker, database
    (and its schema, unless the caller migrates it next).

    The broker before the database: an embedded SQLite database is created by connecting to it.
    """
    check_port(host, port)
    check_data_dir(settings)
    check_broker(settings)
    check_database(settings, migrated=migrated)


def serve_http(host: str, port: int, *, workers: int = 1) -> None:
    """Run uvicorn here until it is stopped; the app reads its settings from the environment."""
    import uvicorn

    uvicorn.run(APP_FACTORY, factory=True, host=host, port=port, workers=workers, log_level="info")

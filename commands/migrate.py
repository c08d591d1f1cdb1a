"""`corral migrate`: upgrade the database schema to this release's (safe to repeat)."""

from __future__ import annotations

import argparse

from sqlalchemy.exc import SQLAlchemyError

from commands.logs import configure_logging
from commands.preflight import Misconfigured, check_data_dir, check_database, guarded, reason, shown_database_url
from store.settings import Settings, get_settings


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("migrate", help="upgrade the database schema")
    parser.set_defaults(func=guarded(run))


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    if settings.is_sqlite:
        check_data_dir(settings)  # the embedded database lives in it
    check_database(settings)
    configure_logging(settings)  # after the checks: a misconfiguration is their one line only
    upgrade(settings)
    return 0


def upgrade(settings: Settings) -> None:
    """`alembic upgrade head`; a database that refuses it (rights, a newer schema) is one line."""
    import migrations

    try:
        migrations.upgrade(settings)
    except SQLAlchemyError as error:
        raise Misconfigured(
            f"cannot upgrade the schema of CORRAL_DATABASE_URL={shown_database_url(settings)} "
            f"({reason(error)}); give that user the right to create tables, or point it at another database"
        ) from None

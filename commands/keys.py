"""`corral keys create NAME`: make an API key and print it once (only its hash is stored)."""

from __future__ import annotations

import argparse

from commands.preflight import check_database, guarded
from store.settings import get_settings


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("keys", help="manage API keys")
    keys_sub = parser.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key and print it (shown once)")
    create.add_argument("name")
    create.set_defaults(func=guarded(create_key))


def create_key(args: argparse.Namespace) -> int:
    from store import keys
    from store.db import make_engine, make_sessionmaker, transaction

    settings = get_settings()
    check_database(settings, migrated=True)
    with transaction(make_sessionmaker(make_engine(settings))) as session:
        row, plain = keys.create_key(session, name=args.name)
    print(f"API key {row.name!r} ({row.id}); shown once, store it now:")
    print(plain)
    return 0

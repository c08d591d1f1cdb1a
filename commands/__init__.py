"""The process commands of `corral`: serve, api, worker, migrate, keys and demo.

This package sits above api, worker and store and may import all three; nothing below imports
it. `core.cli` finds `register` through the `corral.commands` entry point; `python -m commands`
runs the same commands without it.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the service subcommands to `corral`'s parser."""
    # Imported here, not at the top: `commands.ports` (tests, benchmarks) then loads no command.
    from commands import api, demo, keys, migrate, serve, worker

    for command in (serve, api, worker, migrate, keys, demo):
        command.add_parser(subparsers)

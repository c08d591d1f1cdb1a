"""`python -m commands serve ...`: the service commands without the installed `corral` script."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from commands import register


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="corral")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

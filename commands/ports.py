"""Local TCP ports for commands that start a server of their own (demo, tests, benchmarks)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing listens on now; the kernel picks it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])

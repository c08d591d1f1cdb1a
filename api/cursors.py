"""Opaque keyset-pagination cursors: base64url of a small JSON list."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any

from api.errors import ProblemError


def encode(*values: Any) -> str:
    raw = json.dumps(list(values), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str, *types: Callable[[Any], Any]) -> list[Any]:
    """The values `encode` was given, each made by its type; 400 invalid_cursor for anything else."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError) as error:
        raise _invalid() from error
    if not isinstance(values, list) or len(values) != len(types):
        raise _invalid()
    try:
        return [make(value) for make, value in zip(types, values, strict=True)]
    except (TypeError, ValueError, AttributeError) as error:  # what a constructor raises for the wrong type
        raise _invalid() from error


def position(value: Any) -> int:
    """A row's sequence number: an int the database's BIGINT holds (a larger one cannot be bound)."""
    if not isinstance(value, int) or not 0 <= value < 2**63:
        raise ValueError(f"not a position: {value!r}")
    return value


def _invalid() -> ProblemError:
    return ProblemError(
        400,
        "invalid_cursor",
        "Invalid cursor",
        "cursor is not one this API returned; start again without it",
    )

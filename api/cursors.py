"""Opaque keyset-pagination cursors: base64url of a small JSON list."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from api.errors import ProblemError


def encode(*values: Any) -> str:
    raw = json.dumps(list(values), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str, *, arity: int) -> list[Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError) as error:
        raise _invalid() from error
    if not isinstance(values, list) or len(values) != arity:
        raise _invalid()
    return values


def _invalid() -> ProblemError:
    return ProblemError(
        400,
        "invalid_cursor",
        "Invalid cursor",
        "cursor is not one this API returned; start again without it",
    )

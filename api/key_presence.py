"""Whether the service has any API key yet, re-read from the database at most once a second.

Without `require_api_keys`, a service with no key lets everyone in; every request used to ask
the database whether a key exists, one more round trip than the request's own query, which
under load cost a third of GET /jobs/{id}'s throughput (bench/RESULTS.md). The answer changes
once in a deployment's life (the first `corral keys create`), so a second's delay is harmless:
anonymous callers keep access for at most `RECHECK_S` after the first key is made.
"""

from __future__ import annotations

import time

from sqlalchemy.orm import Session

from store import keys

RECHECK_S = 1.0


class KeyPresence:
    """`any_keys()`, cached per process for `recheck_s` (thread-safe: one tuple swap)."""

    def __init__(self, recheck_s: float = RECHECK_S) -> None:
        self.recheck_s = recheck_s
        self._known: tuple[float, bool] | None = None  # (when read, any key then)

    def any_keys(self, session: Session) -> bool:
        known, now = self._known, time.monotonic()
        if known is not None and now - known[0] < self.recheck_s:
            return known[1]
        found = keys.any_keys(session)
        self._known = (now, found)
        return found

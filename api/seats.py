"""Admission to the database: one seat per request session, waited for on the event loop.

Why: a request that waits for a pooled connection inside the thread pool holds a thread while it
waits, and the requests that hold the connections need threads to finish (the next dependency,
the route, the teardown). With more clients than connections every thread ends up waiting on
the pool and the process stalls; with enough of them even `/health` gets no thread. Here the
wait happens on the event loop, where it costs no thread; there are never more seats than pooled
connections, so a seated request's checkout never waits; and a request that finds no seat within
`database_wait_s` is answered 503 with `Retry-After` instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from api.errors import busy


class Seats:
    """At most `capacity` requests hold a database session at once."""

    def __init__(self, capacity: int, wait_s: float) -> None:
        self.capacity, self.wait_s = capacity, wait_s
        self._free = asyncio.Semaphore(capacity)

    async def take(self) -> Callable[[], None]:
        """Wait up to `wait_s` for a seat; returns its release (idempotent, event loop only)."""
        if not self._free.locked():
            await self._free.acquire()  # one is free: returns at once, no timer to arm
        else:
            try:
                async with asyncio.timeout(self.wait_s):  # a timer, not wait_for's task
                    await self._free.acquire()
            except TimeoutError:
                raise busy() from None
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._free.release()

        return release


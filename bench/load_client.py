"""The open-loop client of bench/load.py: requests due on a clock, latency from the due time."""

from __future__ import annotations

import asyncio
import io
import json
import statistics
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field

import httpx
import numpy as np
from PIL import Image

# The GET mix, in turn: one of each per four requests.
READS = ("GET /jobs", "GET /jobs/{id}", "GET /jobs/{id}/clusters", "GET /health")


def small_archive(seed: int, per_class: int = 10, size: int = 16) -> bytes:
    """PNGs in three colour folders: `per_class` each, `size` px."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for label, colour in enumerate([(220, 30, 30), (30, 220, 30), (30, 30, 220)]):
            for i in range(per_class):
                noise = rng.normal(0, 15, (size, size, 3))
                pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
                png = io.BytesIO()
                Image.fromarray(pixels).save(png, format="PNG")
                archive.writestr(f"class{label}/{i:03d}.png", png.getvalue())
    return buffer.getvalue()


class Connections:
    """Keep-alive HTTP/1.1 GETs to one host, a new connection whenever none is idle.

    Never a queue in the client, and O(1) per request: httpx's pool scans every connection for
    every request, which at a few hundred in flight made the client, not the API, the bottleneck.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def get(self, path: str) -> int:
        if self.idle:  # the server may have closed it (keep-alive timeout): then once more, fresh
            try:
                return await self._get(path, self.idle.pop())
            except (OSError, asyncio.IncompleteReadError):
                pass
        return await self._get(path, await asyncio.open_connection(self.host, self.port))

    async def _get(self, path: str, connection: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> int:
        reader, writer = connection
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":", 1)[1]) for line in head.lower().split(b"\r\n")
                          if line.startswith(b"content-length:"))
            await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, StopIteration):
            writer.close()
            raise
        self.idle.append((reader, writer))
        return int(head.split(b" ", 2)[1])

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


@dataclass
class Offered:
    """What one run saw: latencies (s, from the due time) and statuses per endpoint."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: dict[str, dict[int, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    lag_s: list[float] = field(default_factory=list)  # how late the client sent each GET
    job_ids: list[str] = field(default_factory=list)
    seconds: float = 0.0
    due: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # GETs only
    uploads_done: float = 0.0  # when the last upload was answered (loop time)

    async def call(self, client: httpx.AsyncClient, name: str, due: float, method: str, url: str,
                   **kw: object) -> httpx.Response | None:
        loop = asyncio.get_running_loop()
        self.lag_s.append(loop.time() - due)
        try:
            response = await client.request(method, url, **kw)  # type: ignore[arg-type]
        except httpx.HTTPError:
            self.errors[name] += 1
            return None
        self.latencies[name].append(loop.time() - due)
        self.statuses[name][response.status_code] += 1
        return response

    async def read(self, connections: Connections, name: str, due: float, path: str) -> None:
        loop = asyncio.get_running_loop()
        self.lag_s.append(loop.time() - due)
        try:
            status = await connections.get(path)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, StopIteration):
            self.errors[name] += 1
            return
        self.latencies[name].append(loop.time() - due)
        self.due[name].append(due)
        self.statuses[name][status] += 1


async def offer(base: str, *, rate: float, duration: float, uploads: int, finished: str) -> Offered:
    """`rate` GETs a second for `duration` s, each due at its slot; `uploads` POSTs at the start."""
    seen = Offered()
    loop = asyncio.get_running_loop()
    host, port = base.removeprefix("http://").split(":")
    connections = Connections(host, int(port))
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:  # the uploads only

        async def upload(i: int) -> None:
            files = {"archive": (f"set{i}.zip", small_archive(i), "application/zip")}
            data = {"params": json.dumps({"k": 3, "method": "kmeans"})}
            response = await seen.call(client, "POST /jobs", loop.time(), "POST", "/jobs",
                                       files=files, data=data)
            if response is not None and response.status_code == 202:
                seen.job_ids.append(response.json()["id"])
            seen.uploads_done = max(seen.uploads_done, loop.time())

        def path(i: int) -> str:
            job = seen.job_ids[i % len(seen.job_ids)] if seen.job_ids and i % 8 == 1 else finished
            return {0: "/jobs?limit=20", 1: f"/jobs/{job}", 2: f"/jobs/{finished}/clusters",
                    3: "/health"}[i % 4]

        tasks: list[asyncio.Task[object]] = [asyncio.create_task(upload(i)) for i in range(uploads)]
        start, total = loop.time() + 0.05, int(rate * duration)
        for i in range(total):
            due = start + i / rate
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            tasks.append(asyncio.create_task(seen.read(connections, READS[i % 4], due, path(i))))
        await asyncio.gather(*tasks)
        seen.seconds = loop.time() - start
        connections.close()
    return seen


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def summary(seen: Offered) -> dict[str, object]:
    endpoints = {
        name: {"requests": len(values), "p50_ms": statistics.median(values) * 1000,
               "p99_ms": _percentile(values, 0.99), "max_ms": max(values) * 1000,
               "statuses": dict(seen.statuses[name]), "connection_errors": seen.errors[name]}
        for name, values in seen.latencies.items()
    }
    gets = [_percentile(seen.latencies[name], 0.99) for name in READS if name in seen.latencies]
    after = [  # the GETs offered once every upload had its answer
        latency for name in READS
        for latency, due in zip(seen.latencies[name], seen.due[name], strict=True)
        if due > seen.uploads_done
    ]
    five_xx = sum(n for codes in seen.statuses.values() for code, n in codes.items() if code >= 500)
    return {"endpoints": endpoints, "worst_get_p99_ms": max(gets) if gets else None, "5xx": five_xx,
            "connection_errors": sum(seen.errors.values()), "load_seconds": seen.seconds,
            "client_lag_p99_ms": _percentile(seen.lag_s, 0.99) if seen.lag_s else None,
            "gets_after_uploads": {"requests": len(after), "p50_ms": _percentile(after, 0.5) if after else None,
                                   "p99_ms": _percentile(after, 0.99) if after else None}}

"""HTTP side of deploy/smoke.sh: a real archive in, clusters out. Standard library only, so it
runs on the host's python3 with nothing installed.

    python3 deploy/smoke_client.py archive OUT.zip [--per-class 20] [--size 24]
    python3 deploy/smoke_client.py ready URL [--timeout 180]
    python3 deploy/smoke_client.py submit URL ARCHIVE PARAMS_JSON        -> prints the job id
    python3 deploy/smoke_client.py wait URL JOB [--until running|done] [--min-epoch N]
    python3 deploy/smoke_client.py check URL JOB --k 3 --images 60 [--pure]
    python3 deploy/smoke_client.py status URL PATH [--expect 401]

The API key, when there is one, comes from $CORRAL_API_KEY. Every command prints one short
line and exits non-zero on failure.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import struct
import sys
import time
import urllib.error
import urllib.request
import uuid
import zipfile
import zlib

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}


def png(width: int, height: int, pixel) -> bytes:
    rows = b"".join(b"\x00" + b"".join(bytes(pixel(x, y)) for x in range(width)) for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def make_archive(out: str, per_class: int, size: int, seed: int = 0) -> None:
    """One folder per colour class (so the job also reports ACC against the folders); each
    image is its class colour with noise and a random darker square."""
    rng = random.Random(seed)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, (r, g, b) in COLOURS.items():
            for i in range(per_class):
                x0, y0 = rng.randrange(size // 2), rng.randrange(size // 2)
                noise = [[rng.randint(-25, 25) for _ in range(size)] for _ in range(size)]

                def pixel(x, y, r=r, g=g, b=b, x0=x0, y0=y0, noise=noise):
                    n = noise[y][x] - (50 if x0 <= x < x0 + size // 3 and y0 <= y < y0 + size // 3 else 0)
                    return tuple(max(0, min(255, c + n)) for c in (r, g, b))

                zf.writestr(f"{name}/{name}_{i:03d}.png", png(size, size, pixel))


def request(method: str, url: str, body: bytes | None = None, headers: dict | None = None):
    headers = dict(headers or {})
    key = os.environ.get("CORRAL_API_KEY")
    if key:
        headers.setdefault("Authorization", f"Bearer {key}")
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def get_json(url: str):
    status, _, body = request("GET", url)
    if status != 200:
        raise SystemExit(f"GET {url} -> {status}: {body[:300]!r}")
    return json.loads(body)


def cmd_archive(args) -> None:
    make_archive(args.out, args.per_class, args.size)
    print(f"{args.out}: {args.per_class * len(COLOURS)} PNGs in {len(COLOURS)} colour folders")


def cmd_ready(args) -> None:
    deadline, last = time.monotonic() + args.timeout, "no answer"
    while time.monotonic() < deadline:
        try:
            status, _, body = request("GET", f"{args.url}/ready")
            if status == 200:
                print(f"ready: {json.loads(body)}")
                return
            last = f"{status} {body[:200]!r}"
        except OSError as err:
            last = str(err)
        time.sleep(1)
    raise SystemExit(f"not ready after {args.timeout}s: {last}")


def cmd_submit(args) -> None:
    boundary = uuid.uuid4().hex
    with open(args.archive, "rb") as f:
        data = f.read()
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n'.encode()
        + args.params.encode()
        + b"\r\n",
        f'--{boundary}\r\nContent-Disposition: form-data; name="archive"; '
        f'filename="{os.path.basename(args.archive)}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    status, headers, body = request(
        "POST",
        f"{args.url}/jobs",
        b"".join(parts),
        {"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    if status != 202:
        raise SystemExit(f"POST /jobs -> {status}: {body[:500]!r}")
    job = json.loads(body)
    location = {k.lower(): v for k, v in headers.items()}.get("location", "")
    if not location.endswith(f"/jobs/{job['id']}"):
        raise SystemExit(f"202 without a matching Location header: {location!r}")
    print(job["id"])


def cmd_wait(args) -> None:
    deadline = time.monotonic() + args.timeout
    job: dict = {}
    while time.monotonic() < deadline:
        job = get_json(f"{args.url}/jobs/{args.job}")
        state = job["state"]
        epoch = (job.get("progress") or {}).get("epoch") or 0
        if args.until == "running" and state == "running" and epoch >= args.min_epoch:
            print(f"running, epoch {epoch}/{job['progress'].get('epochs')}")
            return
        if state in ("succeeded", "failed", "cancelled"):
            if state != "succeeded":
                raise SystemExit(f"job {args.job} {state}: {json.dumps(job.get('error'))}")
            if args.until == "running":
                raise SystemExit(f"job {args.job} finished before it could be caught running")
            if args.expect_resumed and not (job.get("attempts", 0) >= 2 and (job.get("resumed_from_epoch") or 0) >= 1):
                raise SystemExit(
                    f"succeeded but not resumed: attempts={job.get('attempts')}, "
                    f"resumed_from_epoch={job.get('resumed_from_epoch')}"
                )
            timings = job.get("timings") or {}
            print(
                f"succeeded on {job.get('device')} after {job.get('attempts')} attempt(s), "
                f"resumed_from_epoch={job.get('resumed_from_epoch')}, "
                f"total {timings.get('total', 0):.1f}s"
            )
            return
        time.sleep(1)
    raise SystemExit(f"timeout after {args.timeout}s, last state {job.get('state')!r}")


def cmd_check(args) -> None:
    base = f"{args.url}/jobs/{args.job}"
    job = get_json(base)
    if job["state"] != "succeeded":
        raise SystemExit(f"job is {job['state']}")
    clusters = get_json(f"{base}/clusters")
    sizes = [c["size"] for c in clusters["clusters"]]
    if clusters["k"] != args.k or len(sizes) != args.k:
        raise SystemExit(f"expected {args.k} clusters, got k={clusters['k']} sizes={sizes}")
    if sum(sizes) != args.images:
        raise SystemExit(f"cluster sizes {sizes} do not add up to {args.images}")

    items, cursor = [], None
    while True:
        page = get_json(f"{base}/assignments?limit=25" + (f"&cursor={cursor}" if cursor else ""))
        items += page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    paths = {a["path"] for a in items}
    if len(items) != args.images or len(paths) != args.images:
        raise SystemExit(f"{len(items)} assignments for {len(paths)} paths, want {args.images}")
    if any(not 0 <= a["cluster"] < args.k for a in items):
        raise SystemExit("an assignment names a cluster outside 0..k-1")

    status, _, body = request("GET", f"{base}/assignments?format=csv")
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    if status != 200 or len(rows) != args.images:
        raise SystemExit(f"CSV export: status {status}, {len(rows)} rows")

    detail = ""
    if args.pure:
        by_cluster: dict[int, set[str]] = {}
        for a in items:
            by_cluster.setdefault(a["cluster"], set()).add(a["path"].split("/")[0])
        if sorted(len(v) for v in by_cluster.values()) != [1] * args.k:
            raise SystemExit(f"clusters mix colours: {by_cluster}")
        detail = ", one colour per cluster"
    metrics = job.get("metrics") or {}
    if metrics.get("acc") is not None:
        detail += f", ACC {metrics['acc']:.3f}"
    print(f"{args.k} clusters of sizes {sorted(sizes)}, {len(items)} assignments (JSON pages and CSV){detail}")


def cmd_status(args) -> None:
    old = os.environ.pop("CORRAL_API_KEY", None) if args.anonymous else None
    try:
        status, _, _ = request("GET", f"{args.url}{args.path}")
    finally:
        if old is not None:
            os.environ["CORRAL_API_KEY"] = old
    if status != args.expect:
        raise SystemExit(f"GET {args.path} -> {status}, expected {args.expect}")
    print(f"GET {args.path} -> {status}")


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("archive")
    a.add_argument("out")
    a.add_argument("--per-class", type=int, default=20)
    a.add_argument("--size", type=int, default=24)
    a.set_defaults(func=cmd_archive)
    r = sub.add_parser("ready")
    r.add_argument("url")
    r.add_argument("--timeout", type=float, default=180)
    r.set_defaults(func=cmd_ready)
    s = sub.add_parser("submit")
    s.add_argument("url")
    s.add_argument("archive")
    s.add_argument("params")
    s.set_defaults(func=cmd_submit)
    w = sub.add_parser("wait")
    w.add_argument("url")
    w.add_argument("job")
    w.add_argument("--until", choices=("running", "done"), default="done")
    w.add_argument("--min-epoch", type=int, default=0)
    w.add_argument("--timeout", type=float, default=600)
    w.add_argument("--expect-resumed", action="store_true")
    w.set_defaults(func=cmd_wait)
    c = sub.add_parser("check")
    c.add_argument("url")
    c.add_argument("job")
    c.add_argument("--k", type=int, required=True)
    c.add_argument("--images", type=int, required=True)
    c.add_argument("--pure", action="store_true")
    c.set_defaults(func=cmd_check)
    st = sub.add_parser("status")
    st.add_argument("url")
    st.add_argument("path")
    st.add_argument("--expect", type=int, default=200)
    st.add_argument("--anonymous", action="store_true")
    st.set_defaults(func=cmd_status)
    args = p.parse_args()
    args.url = getattr(args, "url", "").rstrip("/")
    try:
        args.func(args)
    except OSError as err:
        raise SystemExit(f"{args.cmd}: {err}") from err


if __name__ == "__main__":
    sys.exit(main())

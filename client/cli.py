"""The client subcommands of `corral`, found through the `corral.commands` entry point.

They talk to a server only over HTTP (httpx). A server error is printed as its problem+json
`detail` on one line, and the command exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from core.cli import ProgressBar, add_time_argument
from core.config import BOUNDS, METHOD_NAMES
from core.result import Progress

DEFAULT_SERVER = "http://127.0.0.1:8000"
POLL_S = 1.0
FINISHED = ("succeeded", "failed", "cancelled")


class ServerError(Exception):
    """The server answered with an error (its problem detail) or could not be reached."""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add submit, recluster, jobs, status and results to `corral`'s parser."""
    submit = _command(subparsers, "submit", "upload an archive to a server and queue a job", cmd_submit)
    submit.add_argument("archive", type=Path, help="zip, tar or tar.gz of images")
    submit.add_argument("--k", type=k_argument, default=None,
                        help='number of clusters; omitted or "auto": chosen after training')
    submit.add_argument("--k-max", type=int, default=None, dest="k_max",
                        help="largest k tried when k is chosen (default 50)")
    submit.add_argument("--method", choices=METHOD_NAMES, default=None)
    submit.add_argument("--epochs", type=int, default=None)
    add_time_argument(submit)
    submit.add_argument("--seed", type=int, default=None)
    submit.add_argument("--name", default=None)
    submit.add_argument("--wait", action="store_true", help="show progress until the job ends")

    again = _command(subparsers, "recluster", "cluster a finished job again at another k, without training",
                     cmd_recluster)
    again.add_argument("job_id")
    again.add_argument("--k", type=k_argument, required=True, help="number of clusters")
    again.add_argument("--wait", action="store_true", help="wait until it ends, then show the cluster sizes")

    jobs = _command(subparsers, "jobs", "list jobs on a server, newest first", cmd_jobs)
    jobs.add_argument("--limit", type=int, default=20)

    status = _command(subparsers, "status", "show one job", cmd_status)
    status.add_argument("job_id")

    results = _command(subparsers, "results", "download a job's assignments", cmd_results)
    results.add_argument("job_id")
    results.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    results.add_argument("--out", type=Path, default=None, help="write here instead of stdout")


def _command(subparsers: Any, name: str, help: str, func: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(name, help=help)
    parser.add_argument("--server", default=os.environ.get("CORRAL_SERVER", DEFAULT_SERVER),
                        help=f"Corral URL (env CORRAL_SERVER, default {DEFAULT_SERVER})")
    parser.add_argument("--api-key", default=os.environ.get("CORRAL_API_KEY"),
                        help="API key (env CORRAL_API_KEY)")
    parser.set_defaults(func=lambda args: _guarded(func, args))
    return parser


def _guarded(func: Any, args: argparse.Namespace) -> int:
    try:
        with _client(args) as client:
            return int(func(client, args))
    except ServerError as error:
        print(f"corral: error: {error}", file=sys.stderr)
        return 1


def _client(args: argparse.Namespace) -> httpx.Client:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    return httpx.Client(base_url=args.server, headers=headers, timeout=httpx.Timeout(30, write=600))


def call(client: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request; an error status raises ServerError with the problem's one-line detail."""
    try:
        response = client.request(method, url, **kwargs)
    except httpx.HTTPError as error:
        raise ServerError(f"cannot reach {client.base_url}: {error}") from error
    if response.is_error:
        raise ServerError(problem_detail(response))
    return response


def problem_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
        detail = body.get("detail") or body.get("title")
    except (ValueError, AttributeError):
        detail = None
    text = str(detail) if detail else response.text[:200] or response.reason_phrase
    return f"{response.status_code}: {' '.join(text.split())}"


def k_argument(text: str) -> int | str:
    """--k: an integer in core's bounds, or "auto"."""
    if text == "auto":
        return text
    low, high = BOUNDS["k"]
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise argparse.ArgumentTypeError(f'expected an integer from {low} to {high} or "auto", got {text!r}')
    return value


def recluster(client: httpx.Client, job_id: str, k: int, *, idempotency_key: str | None = None) -> dict[str, Any]:
    """Queue a re-clustering of a succeeded job at `k`; the new job (state queued)."""
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    body: dict[str, Any] = call(client, "POST", f"/jobs/{job_id}/reclusterings", json={"k": k}, headers=headers).json()
    return body


def cmd_recluster(client: httpx.Client, args: argparse.Namespace) -> int:
    if args.k == "auto":
        raise ServerError("a re-clustering needs a number for --k")
    job = recluster(client, args.job_id, args.k)
    print(job["id"])
    if not args.wait:
        return 0
    return report(client, wait(client, job["id"]))


def cmd_submit(client: httpx.Client, args: argparse.Namespace) -> int:
    params = {key: value for key in ("k", "k_max", "method", "epochs", "seed", "name")
              if (value := getattr(args, key)) is not None}
    if args.time is not None:
        params["time_budget_s"] = args.time
    try:
        handle = args.archive.open("rb")
    except OSError as error:
        raise ServerError(f"cannot read {args.archive}: {error.strerror}") from error
    with handle:
        files = {"archive": (args.archive.name, handle, "application/octet-stream")}
        job = call(client, "POST", "/jobs", files=files, data={"params": json.dumps(params)}).json()
    print(job["id"])
    if not args.wait:
        return 0
    job = wait(client, job["id"])
    return report(client, job)


def wait(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """Poll until the job ends, drawing the progress bar on stderr."""
    bar = ProgressBar()
    while True:
        job: dict[str, Any] = call(client, "GET", f"/jobs/{job_id}").json()
        progress = job["progress"]
        metrics = {key: progress[key] for key in ("loss", "images_per_s") if progress.get(key) is not None}
        if progress.get("expected_end_at") and job["state"] not in FINISHED:  # a budgeted job's plan
            metrics["eta_s"] = max(0.0, (_parse_time(progress["expected_end_at"]) - time.time()))
        bar(Progress(progress["stage"] or job["state"], progress["epoch"] or 0, progress["epochs"] or 0, metrics))
        if job["state"] in FINISHED:
            bar.close()
            return job
        time.sleep(POLL_S)


def _parse_time(text: str) -> float:
    """An ISO 8601 timestamp of the API as POSIX seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def report(client: httpx.Client, job: dict[str, Any]) -> int:
    """Cluster sizes of a succeeded job; the error of a failed one."""
    if job["state"] != "succeeded":
        error = job.get("error") or {}
        print(f"corral: job {job['id']} {job['state']}: {error.get('detail', '')}".rstrip(": "), file=sys.stderr)
        return 1
    clusters = call(client, "GET", f"/jobs/{job['id']}/clusters").json()["clusters"]
    chosen = job.get("k_selection")
    how = f" (k chosen by {chosen['criterion']} from 2..{chosen['k_max']})" if chosen else ""
    print(f"{job['counts']['clustered']} images -> {len(clusters)} clusters{how}")
    if chosen and chosen.get("note"):
        print(f"  {chosen['note']}")
    for cluster in clusters:
        print(f"  cluster {cluster['id']:>3}: {cluster['size']:>6} images, "
              f"mean confidence {cluster['mean_confidence']:.3f}")
    if job.get("metrics"):
        m = job["metrics"]
        print(f"against the class folders: ACC {m['acc']:.4f}  NMI {m['nmi']:.4f}  ARI {m['ari']:.4f}")
    return 0


def cmd_jobs(client: httpx.Client, args: argparse.Namespace) -> int:
    page = call(client, "GET", "/jobs", params={"limit": args.limit}).json()
    print(f"{'id':36}  {'state':10} {'progress':>8} {'k':>4} {'method':7} {'images':>7}  created")
    for job in page["items"]:
        percent = job["progress"]["percent"]
        print(f"{job['id']:36}  {job['state']:10} {'' if percent is None else f'{percent:.0f}%':>8} "
              f"{_k(job):>4} {job['params']['method']:7} {job['counts']['images']:>7}  "
              f"{job['created_at'][:19].replace('T', ' ')}")
    return 0


def cmd_status(client: httpx.Client, args: argparse.Namespace) -> int:
    job = call(client, "GET", f"/jobs/{args.job_id}").json()
    progress = job["progress"]
    print(f"job {job['id']} ({job['name'] or 'unnamed'}): {job['state']}")
    method, trained = job["params"]["method"], progress.get("method")
    method += f" ({trained})" if trained and trained != method else ""  # what method=auto settled on
    print(f"  k={_k(job)} method={method} images={job['counts']['images']}")
    if job.get("source_job_id"):
        print(f"  re-clustering of {job['source_job_id']}")
    for again in job.get("reclusterings") or []:
        print(f"  re-clustered at k={again['k']}: {again['id']} ({again['state']})")
    if progress["epochs"]:
        print(f"  {progress['stage']} epoch {progress['epoch']}/{progress['epochs']}"
              + (f" loss {progress['loss']:.4f}" if progress["loss"] is not None else ""))
    if job["state"] == "succeeded":
        return report(client, job)
    if job["error"]:
        print(f"  error: {job['error']['detail']}")
    return 0


def _k(job: dict[str, Any]) -> str:
    return "auto" if job.get("k") is None else str(job["k"])


def cmd_results(client: httpx.Client, args: argparse.Namespace) -> int:
    url = f"/jobs/{args.job_id}/assignments"
    with client.stream("GET", url, params={"format": args.format}) as response:
        if response.is_error:
            response.read()
            raise ServerError(problem_detail(response))
        out = args.out.open("wb") if args.out else sys.stdout.buffer
        try:
            for chunk in response.iter_bytes():
                out.write(chunk)
        finally:
            if args.out:
                out.close()
            else:
                out.flush()
    return 0

"""Issue 17: re-clustering a finished 70,000-image job at a new k, end to end through the API.

The job: all 70,000 MNIST images (bench.upload's zip, one folder per digit), trained once by the
default deep method (IMC-SwAV) with one epoch, through the API and a real `corral worker` on
SQLite (`POST /jobs` -> succeeded). The Postgres job gets the same archive through its own API
and the SQLite job's trained outputs (embeddings.npy, model.pt, labels and confidences) written
with the worker's own functions (store.results.write_results, store.jobs.finish_job), so both
backends re-cluster the same representation. The trained job is kept under bench/out/recluster/
and reused by later runs (`--retrain` trains again).

Then, per backend, with `corral api` and `corral worker` (its re-clustering process included)
running: for each k, `POST /jobs/{id}/reclusterings` and `GET /jobs/{new id}` every 20 ms until
it succeeded. Reported per k: the end-to-end seconds (POST sent to succeeded seen), queue pickup
(created_at -> started_at, the server's clock), the worker's own steps (load, cluster, model,
write) and the rest (claim, commit, the last poll). The source's clusters are compared before
and after; one prediction is made with the last re-clustering's model.

Quality (`--quality`, on by default), in this process on the trained job's embeddings: per k, the
service's fit (`core.recluster.fit_kmeans`: restarts on a sample, a few Lloyd steps on all rows)
against full k-means (the same restarts, Lloyd to convergence on all rows), seed 0: seconds,
inertia on all rows, NMI/ACC against the class folders, and the NMI between the two partitions;
and the whole `core.recluster.recluster` call with the job's read-out (the service's path:
IMC-SwAV's classifier head) beside it without (k-means): seconds and NMI/ACC.

    flock /tmp/corral-cpu.lock python -m bench.recluster --out bench/results/recluster.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from bench.service import drop_database, fresh_database, healthy
from bench.upload import cpu_model, mnist_zip
from commands.ports import free_port
from commands.serve import stop_process_group

OUT = Path("bench/out/recluster")
N_IMAGES = 70_000
TRAIN = {"k": 10, "method": "imc", "epochs": 1, "name": "mnist-70k-imc-1ep"}
KS = (5, 15, 20, 30, 10)
POLL_S = 0.02


def env_for(data_dir: Path, database_url: str) -> dict[str, str]:
    return {
        **os.environ, "PYTHONPATH": str(Path.cwd()), "CORRAL_DATA_DIR": str(data_dir),
        "CORRAL_DATABASE_URL": database_url, "CORRAL_BROKER_URL": "filesystem://",
        "CORRAL_LOG_LEVEL": "WARNING",
    }


class Service:
    """`corral migrate`, then `corral api` and `corral worker` on one data folder and database."""

    def __init__(self, data_dir: Path, database_url: str, *, worker: bool = True) -> None:
        self.env = env_for(data_dir, database_url)
        subprocess.run([sys.executable, "-m", "commands", "migrate"], env=self.env, check=True, capture_output=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        log = (data_dir / "service.log").open("ab")
        self.processes = [subprocess.Popen([sys.executable, "-m", "commands", "api", "--port", str(self.port)],
                                           env=self.env, stdout=log, stderr=log, start_new_session=True)]
        if worker:
            self.processes.append(subprocess.Popen([sys.executable, "-m", "commands", "worker"], env=self.env,
                                                   stdout=log, stderr=log, start_new_session=True))
        if not healthy(self.port):
            raise RuntimeError("the API did not start")
        self.client = httpx.Client(base_url=self.url, timeout=600)

    def stop(self) -> None:
        self.client.close()
        for process in self.processes:
            stop_process_group(process)


def wait_done(client: httpx.Client, job_id: str, poll_s: float, timeout_s: float) -> tuple[dict[str, Any], float]:
    deadline = time.monotonic() + timeout_s
    while True:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job, time.perf_counter()
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} still {job['state']} after {timeout_s} s")
        time.sleep(poll_s)


def upload(client: httpx.Client, archive: Path, params: dict[str, Any]) -> dict[str, Any]:
    with archive.open("rb") as body:
        response = client.post("/jobs", files={"archive": (archive.name, body, "application/zip")},
                               data={"params": json.dumps(params)})
    response.raise_for_status()
    job: dict[str, Any] = response.json()
    return job


def train(archive: Path, params: dict[str, Any], retrain: bool) -> tuple[Path, dict[str, Any]]:
    """The trained SQLite job (data folder, job), made through the API once and then reused."""
    folder = OUT / params["name"] / "sqlite"
    record = OUT / params["name"] / "trained.json"
    if record.exists() and not retrain:
        return folder, json.loads(record.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    service = Service(folder.resolve(), f"sqlite:///{(folder / 'corral.db').resolve()}")
    try:
        started = time.perf_counter()
        queued = upload(service.client, archive, params)
        job, _ = wait_done(service.client, queued["id"], 2.0, 7200)
        if job["state"] != "succeeded":
            raise RuntimeError(f"training failed: {job['error']}")
        job["wall_s"] = round(time.perf_counter() - started, 1)
    finally:
        service.stop()
    record.write_text(json.dumps(job, indent=1))
    return folder, job


def postgres_copy(
    archive: Path, trained_dir: Path, trained: dict[str, Any], database_url: str
) -> tuple[Path, str]:
    """The same job on Postgres: uploaded through its API, results written by the worker's functions."""
    from store import blobs, jobs, results
    from store.db import make_engine, make_sessionmaker, transaction
    from store.models import JobState
    from store.settings import Settings

    folder = trained_dir.parent / "postgres"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    service = Service(folder.resolve(), database_url, worker=False)
    try:
        queued = upload(service.client, archive, trained["params"] | {"name": trained["name"]})
    finally:
        service.stop()
    source = uuid.UUID(trained["id"])
    target = uuid.UUID(queued["id"])
    sqlite = Settings(data_dir=trained_dir.resolve())
    pg = Settings(data_dir=folder.resolve(), database_url=database_url)
    for name in ("embeddings.npy", "model.pt"):
        shutil.copy(blobs.job_dir(sqlite, source) / name, blobs.job_dir(pg, target) / name)
    read = make_sessionmaker(make_engine(sqlite))
    with read() as session:
        done = list(results.iter_assignments(session, job_id=source))
    by_path = {row.path: row for row in done}
    write = make_sessionmaker(make_engine(pg))
    with transaction(write) as session:
        kept = [image for image in jobs.list_images(session, job_id=target) if image.path in by_path]
        results.write_results(session, job_id=target, images=kept, labels=[by_path[i.path].cluster for i in kept],
                              confidences=[by_path[i.path].confidence for i in kept], k=trained["k"])
        claimed = jobs.get_job(session, job_id=target)
        assert claimed is not None and jobs.claim_job(session, job=claimed, worker_id="bench:0")
        jobs.finish_job(session, job_id=target, worker_id="bench:0", state=JobState.SUCCEEDED,
                        n_clustered=len(kept), k=trained["k"], metrics=trained["metrics"], stage="done")
    return folder, str(target)


def digit_png() -> bytes:
    from bench.datasets import read_idx

    mnist = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mnist"
    image = read_idx(mnist / "t10k-images-idx3-ubyte.gz")[0]
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def seconds_between(a: str, b: str) -> float:
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


def measure(folder: Path, database_url: str, job_id: str, ks: tuple[int, ...]) -> dict[str, Any]:
    service = Service(folder.resolve(), database_url)
    try:
        client = service.client
        before = client.get(f"/jobs/{job_id}/clusters").json()
        time.sleep(10)  # the worker's re-clustering process imports torch once, at its start
        runs = []
        for k in ks:
            sent = time.perf_counter()
            response = client.post(f"/jobs/{job_id}/reclusterings", json={"k": k})
            response.raise_for_status()
            job, seen = wait_done(client, response.json()["id"], POLL_S, 600)
            if job["state"] != "succeeded":
                raise RuntimeError(f"re-clustering at k={k} {job['state']}: {job['error']}")
            steps = {key: job["timings"][key] for key in ("load", "cluster", "model", "write", "total")}
            end_to_end = seen - sent
            pickup = seconds_between(job["created_at"], job["started_at"])
            runs.append({
                "k": k, "id": job["id"], "end_to_end_s": round(end_to_end, 3),
                "queue_pickup_s": round(pickup, 3), "worker_s": steps,
                "rest_s": round(end_to_end - pickup - steps["total"], 3),
                "acc": job["metrics"]["acc"], "nmi": job["metrics"]["nmi"],
            })
            print(json.dumps(runs[-1]), flush=True)
        after = client.get(f"/jobs/{job_id}/clusters").json()
        predicted = client.post(f"/jobs/{runs[-1]['id']}/predict", files=[("images", ("digit.png", digit_png()))])
        csv_bytes = len(client.get(f"/jobs/{runs[-1]['id']}/assignments", params={"format": "csv"}).content)
        return {
            "runs": runs,
            "max_end_to_end_s": max(r["end_to_end_s"] for r in runs),
            "source_unchanged": before == after,
            "predict_status": predicted.status_code,
            "predict_k": predicted.json().get("k"),
            "csv_export_bytes": csv_bytes,
        }
    finally:
        service.stop()


def quality(trained_dir: Path, trained: dict[str, Any], ks: tuple[int, ...]) -> list[dict[str, Any]]:
    """The service's sampled fit against full k-means on the trained job's embeddings, per k, and
    the service's whole re-clustering with the job's read-out and without."""
    import numpy as np
    import torch

    from core.data.images import folder_labels
    from core.kmeans import TOL, KMeansFit, kmeans, normalise
    from core.metrics import accuracy, nmi
    from core.predict import load_model
    from core.recluster import RESTARTS, fit_kmeans, recluster
    from store import blobs, results
    from store.db import make_engine, make_sessionmaker
    from store.settings import Settings

    settings = Settings(data_dir=trained_dir.resolve())
    source = uuid.UUID(trained["id"])
    with make_sessionmaker(make_engine(settings))() as session:
        truth, _ = folder_labels([image.path for image in results.clustered_images(session, job_id=source)])
    assert truth is not None
    embeddings = np.load(blobs.embeddings_path(settings, source))
    space_path = blobs.calibration_space_path(settings, source)  # MMDC's, as the worker reads it
    space = np.load(space_path) if space_path.is_file() else None
    unit = normalise(torch.from_numpy(embeddings))
    readout = load_model(blobs.model_path(settings, source)).readout

    def full(x: torch.Tensor, k: int, generator: torch.Generator) -> KMeansFit:
        return kmeans(x, k, generator=generator, restarts=RESTARTS, tol=TOL)

    rows = []
    for k in ks:
        fits = {}
        for name, fit in (("sampled", fit_kmeans), ("full", full)):
            started = time.perf_counter()
            done = fit(unit, k, torch.Generator().manual_seed(0))
            fits[name] = (time.perf_counter() - started, done.inertia, done.labels.numpy())
        row: dict[str, Any] = {"k": k}
        for name, (seconds, inertia, labels) in fits.items():
            row[name] = {"s": round(seconds, 3), "inertia": round(inertia, 2), "nmi": round(nmi(truth, labels), 4),
                         "acc": round(accuracy(truth, labels), 4)}
        row["inertia_ratio"] = round(fits["sampled"][1] / fits["full"][1], 4)
        row["nmi_sampled_vs_full"] = round(nmi(fits["full"][2], fits["sampled"][2]), 4)
        # the whole core.recluster call (fit, calibration, metrics) with the read-out, as the
        # service calls it (IMC-SwAV: a classifier head), and without (k-means)
        for name, given in (("service", readout), ("kmeans_only", None)):
            started = time.perf_counter()
            done = recluster(embeddings, k, labels=truth, readout=given, calibration_space=space)
            assert done.metrics is not None
            row[name] = {"s": round(time.perf_counter() - started, 3), "head": done.head is not None,
                         "nmi": round(done.metrics["nmi"], 4), "acc": round(done.metrics["acc"], 4)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results/recluster.json"))
    parser.add_argument("--ks", type=int, nargs="+", default=list(KS))
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgres"])
    parser.add_argument("--retrain", action="store_true", help="train the 70,000-image job again")
    parser.add_argument("--images", type=int, default=N_IMAGES, help="the first N MNIST images (a dry run)")
    parser.add_argument("--method", default=TRAIN["method"], help="the trained job's method (a dry run)")
    parser.add_argument("--quality", action=argparse.BooleanOptionalAction, default=True,
                        help="score the sampled k-means fit against full k-means at each k (in this process)")
    args = parser.parse_args()
    archive = mnist_zip(args.images)
    params = TRAIN | {"method": args.method, "name": f"mnist-{args.images}-{args.method}-1ep"}
    trained_dir, trained = train(archive, params, args.retrain)
    print(f"trained job {trained['id']}: {trained['timings']} metrics {trained['metrics']}", flush=True)
    report: dict[str, Any] = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()},
        "trained": {key: trained.get(key) for key in ("id", "params", "k", "metrics", "timings", "device", "wall_s")},
        "images": trained["counts"]["clustered"],
        "backends": {},
    }
    if args.quality:
        report["quality"] = quality(trained_dir, trained, tuple(args.ks))
    if "sqlite" in args.backends:
        url = f"sqlite:///{(trained_dir / 'corral.db').resolve()}"
        report["backends"]["sqlite"] = measure(trained_dir, url, trained["id"], tuple(args.ks))
    if "postgres" in args.backends:
        name, url = fresh_database()
        try:
            folder, job_id = postgres_copy(archive, trained_dir, trained, url)
            report["backends"]["postgres"] = measure(folder, url, job_id, tuple(args.ks))
        finally:
            drop_database(name)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({b: r["max_end_to_end_s"] for b, r in report["backends"].items()}))


if __name__ == "__main__":
    main()

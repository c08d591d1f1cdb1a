import os
import signal
import uuid
from collections.abc import Callable
from subprocess import Popen

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.main import create_app
from store import blobs
from store.models import JobState
from store.settings import Settings
from tests.conftest import COLOURS, make_zip, png_bytes
from tests.e2e.conftest import FAST, wait_for
from tests.worker.test_run import stored_job

pytestmark = pytest.mark.e2e

StartWorker = Callable[[Settings], Popen[bytes]]


def upload_to_clusters(settings: Settings, start_worker: StartWorker) -> None:
    start_worker(settings)
    with TestClient(create_app(settings)) as client:
        response = client.post(
            "/jobs",
            files={"archive": ("colours.zip", make_zip(per_class=12), "application/zip")},
            data={"params": '{"k": 3, "method": "kmeans"}'},
        )
        assert response.status_code == 202, response.text
        job_url = response.headers["location"]
        sessions = client.app.state.sessions  # type: ignore[attr-defined]
        job_id = uuid.UUID(job_url.rsplit("/", 1)[1])
        wait_for(sessions, job_id, lambda job: job.state not in ("queued", "running"))
        job = client.get(job_url).json()
        assert job["state"] == "succeeded", job
        assert job["counts"]["clustered"] == 36 and job["attempts"] == 1
        assert job["metrics"]["acc"] == pytest.approx(1.0)
        clusters = client.get(f"{job_url}/clusters").json()["clusters"]
        assert sorted(c["size"] for c in clusters) == [12, 12, 12]
        csv_text = client.get(f"{job_url}/assignments", params={"format": "csv"}).text
        assert len(csv_text.strip().splitlines()) == 1 + 36
        # the worker kept the model: new images are assigned without retraining
        items = client.get(f"{job_url}/assignments").json()["items"]
        red = next(item for item in items if item["path"].startswith("red/"))
        image = png_bytes(COLOURS["red"], np.random.default_rng(5))
        predicted = client.post(f"{job_url}/predict", files=[("images", ("new.png", image, "image/png"))])
        assert predicted.status_code == 200, predicted.text
        assert predicted.json()["predictions"][0]["cluster"] == red["cluster"]
        assert client.get(f"{job_url}/embeddings.npy").status_code == 200


@pytest.mark.parametrize("backend", ["sqlite"])
def test_embedded_mode_sqlite_and_filesystem_broker_upload_to_clusters(
    settings: Settings, start_worker: StartWorker
) -> None:
    upload_to_clusters(settings, start_worker)


@pytest.mark.parametrize("backend", ["postgres"])
def test_deployment_mode_postgres_and_redis_upload_to_clusters(
    redis_settings: Settings, start_worker: StartWorker
) -> None:
    upload_to_clusters(redis_settings, start_worker)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_sigkilled_worker_job_resumes_from_its_checkpoint_on_a_new_worker(
    settings: Settings, e2e_sessions: sessionmaker[Session], start_worker: StartWorker
) -> None:
    settings = settings.model_copy(update=FAST)
    job_id = stored_job(
        settings,
        e2e_sessions,
        {"k": 3, "method": "mmdc", "epochs": 12, "batch_size": 24, "backbone": "vgg"},
    )
    from store import queue

    queue.enqueue_job(queue.make_celery(settings), settings, job_id)
    first = start_worker(settings)
    wait_for(
        e2e_sessions,
        job_id,
        lambda job: (job.epoch or 0) >= 2 and blobs.checkpoint_path(settings, job_id).exists(),
    )
    os.killpg(first.pid, signal.SIGKILL)  # the whole worker: parent and the job's child
    first.wait()
    start_worker(settings)  # its reaper finds the silent job and requeues it
    job = wait_for(e2e_sessions, job_id, lambda job: job.state in ("succeeded", "failed"))
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.attempts == 2
    assert (job.resumed_from_epoch or 0) >= 2


@pytest.mark.parametrize("backend", ["sqlite"])
def test_client_submit_wait_shows_progress_and_cluster_sizes(
    settings: Settings, start_worker: StartWorker, server: str, tmp_path, capsys  # type: ignore[no-untyped-def]
) -> None:
    from core.cli import main

    start_worker(settings)
    archive = tmp_path / "colours.zip"
    archive.write_bytes(make_zip(per_class=7))
    code = main(["submit", str(archive), "--k", "3", "--method", "kmeans", "--wait", "--server", server])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "epoch" in err and "[" in err  # the progress bar, on stderr
    assert "21 images -> 3 clusters" in out and out.count("7 images, mean confidence") == 3

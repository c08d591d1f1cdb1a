"""k omitted and re-clustering, run by real `corral worker` processes (a training process and
its re-clustering companion): SQLite with the filesystem broker, Postgres with Redis."""

import io
import uuid
import zipfile
from collections.abc import Callable
from subprocess import Popen

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.main import create_app
from store import blobs, queue
from store.settings import Settings
from tests.conftest import COLOURS, make_zip, png_bytes
from tests.e2e.conftest import FAST, wait_for
from tests.worker.test_run import stored_job
from worker.run import execute_job

pytestmark = pytest.mark.e2e

StartWorker = Callable[[Settings], Popen[bytes]]


def finished(job) -> bool:  # type: ignore[no-untyped-def]
    return job.state not in ("queued", "running", "cancelling")


def auto_k_then_recluster(settings: Settings, start_worker: StartWorker) -> None:
    start_worker(settings)
    with TestClient(create_app(settings)) as client:
        sessions = client.app.state.sessions  # type: ignore[attr-defined]
        response = client.post(
            "/jobs",
            files={"archive": ("colours.zip", make_zip(per_class=10), "application/zip")},
            data={"params": '{"method": "kmeans", "k_max": 6}'},
        )
        assert response.status_code == 202, response.text
        source_id = response.json()["id"]
        wait_for(sessions, uuid.UUID(source_id), finished)
        source = client.get(f"/jobs/{source_id}").json()
        assert source["state"] == "succeeded", source["error"]
        assert source["k"] == source["k_selection"]["k"] and source["k_selection"]["k_max"] == 6
        before = client.get(f"/jobs/{source_id}/clusters").json()

        k = 2 if source["k"] != 2 else 3
        response = client.post(f"/jobs/{source_id}/reclusterings", json={"k": k})
        assert response.status_code == 202, response.text
        url = response.headers["location"]
        wait_for(sessions, uuid.UUID(response.json()["id"]), finished)
        job = client.get(url).json()
        assert job["state"] == "succeeded", job["error"]
        assert job["k"] == k and job["source_job_id"] == source_id and job["counts"]["clustered"] == 30
        assert set(job["metrics"]) >= {"acc", "nmi", "ari"}
        clusters = client.get(f"{url}/clusters").json()
        assert clusters["k"] == k and sum(c["size"] for c in clusters["clusters"]) == 30
        assert len(client.get(f"{url}/assignments", params={"format": "csv"}).text.strip().splitlines()) == 31
        with zipfile.ZipFile(io.BytesIO(client.get(f"{url}/export.zip").content)) as archive:
            assert len(archive.namelist()) == 30
        image = png_bytes(COLOURS["blue"], np.random.default_rng(9))
        predicted = client.post(f"{url}/predict", files=[("images", ("new.png", image, "image/png"))])
        assert predicted.status_code == 200, predicted.text
        assert predicted.json()["k"] == k and 0 <= predicted.json()["predictions"][0]["cluster"] < k
        assert client.get(f"/jobs/{source_id}/clusters").json() == before
        assert [r["id"] for r in client.get(f"/jobs/{source_id}").json()["reclusterings"]] == [job["id"]]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_embedded_mode_auto_k_then_recluster(settings: Settings, start_worker: StartWorker) -> None:
    auto_k_then_recluster(settings, start_worker)


@pytest.mark.parametrize("backend", ["postgres"])
def test_deployment_mode_auto_k_then_recluster(redis_settings: Settings, start_worker: StartWorker) -> None:
    auto_k_then_recluster(redis_settings, start_worker)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_reclustering_does_not_wait_behind_a_training_job(
    settings: Settings, e2e_sessions: sessionmaker[Session], start_worker: StartWorker
) -> None:
    settings = settings.model_copy(update=FAST)
    source = stored_job(settings, e2e_sessions, {"k": 3, "method": "kmeans"})
    assert execute_job(source, settings=settings, sessions=e2e_sessions) == "succeeded"
    training = stored_job(
        settings, e2e_sessions, {"k": 3, "method": "mmdc", "epochs": 500, "batch_size": 24, "backbone": "vgg"}
    )
    celery = queue.make_celery(settings)
    queue.enqueue_job(celery, settings, training)
    start_worker(settings)  # one training slot: the long job takes it
    wait_for(e2e_sessions, training, lambda job: (job.epoch or 0) >= 1)
    with TestClient(create_app(settings)) as client:
        response = client.post(f"/jobs/{source}/reclusterings", json={"k": 2})
        assert response.status_code == 202, response.text
        job = wait_for(e2e_sessions, uuid.UUID(response.json()["id"]), finished, timeout_s=120)
        assert job.state == "succeeded", job.error
        busy = client.get(f"/jobs/{training}").json()
        assert busy["state"] == "running"  # still training: the re-clustering did not wait for it
        assert client.post(f"/jobs/{training}/cancel").status_code == 202
    wait_for(e2e_sessions, training, finished)
    assert blobs.model_path(settings, job.id).is_file()

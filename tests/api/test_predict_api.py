import uuid

import numpy as np
import pytest
from fastapi.testclient import TestClient

from store import blobs
from store.settings import Settings
from tests.conftest import COLOURS, png_bytes

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])  # the worker's heartbeat thread commits


def test_predict_puts_new_images_in_the_cluster_of_their_colour(
    client: TestClient, succeeded_job: dict  # type: ignore[type-arg]
) -> None:
    url = f"/jobs/{succeeded_job['id']}"
    trained = {a["path"].split("/")[0]: a["cluster"] for a in client.get(f"{url}/assignments").json()["items"]}
    rng = np.random.default_rng(7)
    files = [
        ("images", (f"new-{name}.png", png_bytes(rgb, rng, size=40), "image/png"))
        for name, rgb in COLOURS.items()
    ]
    files.append(("images", ("notes.txt", b"hello", "text/plain")))
    response = client.post(f"{url}/predict", files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["k"] == 3 and [p["filename"] for p in body["predictions"]] == [
        "new-red.png", "new-green.png", "new-blue.png", "notes.txt"
    ]
    for prediction, name in zip(body["predictions"], COLOURS, strict=False):
        assert prediction["cluster"] == trained[name] and 0 <= prediction["confidence"] <= 1
    assert body["predictions"][3] == {
        "filename": "notes.txt", "cluster": None, "confidence": None, "skipped": "not_an_image"
    }


def test_predict_refuses_unfinished_jobs_and_empty_requests(
    client: TestClient, submit, succeeded_job: dict  # type: ignore[no-untyped-def, type-arg]
) -> None:
    queued = submit().json()
    image = ("images", ("a.png", png_bytes((1, 2, 3), np.random.default_rng(0)), "image/png"))
    response = client.post(f"/jobs/{queued['id']}/predict", files=[image])
    assert response.status_code == 409 and response.json()["type"].endswith("job_not_succeeded")
    response = client.post(f"/jobs/{succeeded_job['id']}/predict", data={"x": "1"})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"


def test_predict_without_a_usable_model_answers_problems(
    client: TestClient, succeeded_job: dict, settings: Settings  # type: ignore[type-arg]
) -> None:
    job_id = uuid.UUID(succeeded_job["id"])
    image = ("images", ("a.png", png_bytes((1, 2, 3), np.random.default_rng(0)), "image/png"))
    blobs.model_path(settings, job_id).write_bytes(b"not a model")
    response = client.post(f"/jobs/{job_id}/predict", files=[image])
    assert response.status_code == 500 and response.json()["type"].endswith("prediction_failed")
    assert response.json()["detail"]  # the child's one-line reason
    blobs.model_path(settings, job_id).unlink()
    response = client.post(f"/jobs/{job_id}/predict", files=[image])
    assert response.status_code == 404 and response.json()["type"].endswith("model_not_found")

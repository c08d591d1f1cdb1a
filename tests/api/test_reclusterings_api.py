"""POST /jobs/{id}/reclusterings, k omitted, and every per-job route on a re-clustering's result,
on SQLite and Postgres.

The worker's part runs in this process (worker.run.execute_job); its heartbeat thread commits,
so these tests use committing sessions, on Postgres in a database of this module's own.
tests/e2e/test_reclustering_e2e.py runs the same in real Celery workers.
"""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from store import blobs, jobs, keys
from store.db import make_engine, make_sessionmaker
from store.models import ApiKey, JobState
from store.models import Job as JobRow
from store.settings import Settings
from tests.conftest import fresh_pg_database
from worker.run import execute_job

Job = dict[str, Any]


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """This module commits: its own Postgres database, not the suite's rolled-back one."""
    with fresh_pg_database() as url:
        yield url


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(settings)
    factory = make_sessionmaker(engine)
    yield factory
    with factory() as session, session.begin():  # keys would lock the next test out
        session.execute(delete(ApiKey))
    engine.dispose()


def recluster(client: TestClient, job_id: str, k: object, **kwargs: Any) -> httpx.Response:
    return client.post(f"/jobs/{job_id}/reclusterings", json={"k": k}, **kwargs)


def run(settings: Settings, sessions: sessionmaker[Session], job_id: str) -> None:
    assert execute_job(uuid.UUID(job_id), settings=settings, sessions=sessions) == JobState.SUCCEEDED


def snapshot(client: TestClient, job_id: str) -> dict[str, Any]:
    """Everything a client can read of a job's result."""
    return {
        "job": {key: value for key, value in client.get(f"/jobs/{job_id}").json().items() if key != "reclusterings"},
        "clusters": client.get(f"/jobs/{job_id}/clusters").json(),
        "assignments": client.get(f"/jobs/{job_id}/assignments?format=csv").text,
    }


@pytest.fixture
def reclustered(
    client: TestClient, succeeded_job: Job, settings: Settings, sessions: sessionmaker[Session]
) -> tuple[Job, Job, dict[str, Any]]:
    """(source, its re-clustering at k=2 run to its end, the source as read before)."""
    before = snapshot(client, succeeded_job["id"])
    response = recluster(client, succeeded_job["id"], 2)
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/jobs/{response.json()['id']}"
    run(settings, sessions, response.json()["id"])
    return succeeded_job, client.get(response.headers["location"]).json(), before


def test_a_reclustering_has_its_own_result_and_leaves_the_source_unchanged(
    client: TestClient, reclustered: tuple[Job, Job, dict[str, Any]]
) -> None:
    source, job, before = reclustered
    assert job["state"] == "succeeded", job["error"]
    assert job["k"] == 2 and job["params"]["k"] == 2 and job["source_job_id"] == source["id"]
    assert job["counts"]["clustered"] == 20 and job["timings"]["cluster"] >= 0
    assert set(job["metrics"]) >= {"acc", "nmi", "ari"}  # against the three colour folders
    assert job["metrics"]["acc"] < 1.0  # two clusters cannot hold three classes apart
    url = f"/jobs/{job['id']}"

    clusters = client.get(f"{url}/clusters").json()
    assert clusters["k"] == 2 and sum(c["size"] for c in clusters["clusters"]) == 20
    members = client.get(f"{url}/clusters/0/images").json()["items"]
    assert len(members) == clusters["clusters"][0]["size"]
    items = client.get(f"{url}/assignments", params={"limit": 7}).json()
    assert len(items["items"]) == 7 and items["next_cursor"]
    assert {item["cluster"] for item in client.get(f"{url}/assignments").json()["items"]} == {0, 1}
    confidences = [item["confidence"] for item in client.get(f"{url}/assignments").json()["items"]]
    assert all(0.5 <= c <= 1.0 for c in confidences)
    assert len(client.get(f"{url}/assignments?format=csv").text.strip().splitlines()) == 21
    assert len(client.get(f"{url}/assignments?format=jsonl").text.strip().splitlines()) == 20
    assert client.get(f"{url}/assignments?format=parquet").content[:4] == b"PAR1"
    with zipfile.ZipFile(io.BytesIO(client.get(f"{url}/export.zip").content)) as archive:
        folders = {name.split("/")[0] for name in archive.namelist()}
        assert folders == {"cluster-000", "cluster-001"} and len(archive.namelist()) == 20
    source_embeddings = client.get(f"/jobs/{source['id']}/embeddings.npy").content
    assert client.get(f"{url}/embeddings.npy").content == source_embeddings  # the same representation
    thumbnail = client.get(f"{url}/images/{members[0]['image_id']}/thumbnail")
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    page = client.get(f"/ui{url}")
    assert page.status_code == 200 and f'href="/ui/jobs/{source["id"]}"' in page.text

    assert snapshot(client, source["id"]) == before  # the source is untouched
    listed = client.get(f"/jobs/{source['id']}").json()["reclusterings"]
    assert [(r["id"], r["k"], r["state"]) for r in listed] == [(job["id"], 2, "succeeded")]
    assert client.get(url).json()["reclusterings"] == []
    source_page = client.get(f"/ui/jobs/{source['id']}").text
    assert f'href="/ui/jobs/{job["id"]}"' in source_page and 'id="recluster"' in source_page


def test_a_reclustering_of_a_reclustering_uses_the_trained_job(
    client: TestClient, reclustered: tuple[Job, Job, dict[str, Any]], settings: Settings,
    sessions: sessionmaker[Session],
) -> None:
    source, job, _ = reclustered
    again = recluster(client, job["id"], 3)
    assert again.status_code == 202, again.text
    assert again.json()["source_job_id"] == source["id"]
    run(settings, sessions, again.json()["id"])
    assert client.get(f"/jobs/{again.json()['id']}").json()["metrics"]["acc"] == pytest.approx(1.0)


def test_deleting_a_reclustering_leaves_its_source(
    client: TestClient, reclustered: tuple[Job, Job, dict[str, Any]], settings: Settings
) -> None:
    source, job, before = reclustered
    assert blobs.model_path(settings, uuid.UUID(job["id"])).is_file()
    assert client.delete(f"/jobs/{job['id']}").status_code == 204
    assert client.get(f"/jobs/{job['id']}").status_code == 404
    assert not blobs.job_dir(settings, uuid.UUID(job["id"])).exists()
    assert snapshot(client, source["id"]) == before
    assert client.get(f"/jobs/{source['id']}").json()["reclusterings"] == []


def test_deleting_the_source_deletes_its_reclusterings(
    client: TestClient, reclustered: tuple[Job, Job, dict[str, Any]], settings: Settings
) -> None:
    source, job, _ = reclustered
    queued = recluster(client, source["id"], 3).json()
    assert client.delete(f"/jobs/{source['id']}").status_code == 204
    for gone in (source, job, queued):
        assert client.get(f"/jobs/{gone['id']}").status_code == 404
        assert not blobs.job_dir(settings, uuid.UUID(gone["id"])).exists()


def test_a_source_with_a_running_reclustering_is_not_deleted(
    client: TestClient, succeeded_job: Job, sessions: sessionmaker[Session]
) -> None:
    queued = recluster(client, succeeded_job["id"], 2).json()
    with sessions() as session, session.begin():
        row = jobs.get_job(session, job_id=uuid.UUID(queued["id"]))
        assert row is not None and jobs.claim_job(session, job=row, worker_id="elsewhere:1")
    response = client.delete(f"/jobs/{succeeded_job['id']}")
    assert response.status_code == 409 and response.json()["type"].endswith("/job_running")
    assert client.get(f"/jobs/{succeeded_job['id']}").status_code == 200


def test_a_queued_reclustering_is_cancelled_at_once(client: TestClient, succeeded_job: Job) -> None:
    queued = recluster(client, succeeded_job["id"], 2).json()
    assert queued["state"] == "queued"
    assert client.post(f"/jobs/{queued['id']}/cancel").json()["state"] == "cancelled"
    listed = client.get(f"/jobs/{succeeded_job['id']}").json()["reclusterings"]
    assert [r["state"] for r in listed] == ["cancelled"]


def test_results_of_a_reclustering_wait_for_it(client: TestClient, succeeded_job: Job) -> None:
    queued = recluster(client, succeeded_job["id"], 2).json()
    for path in ("clusters", "assignments", "export.zip", "embeddings.npy"):
        response = client.get(f"/jobs/{queued['id']}/{path}")
        assert response.status_code == 409 and response.json()["type"].endswith("/job_not_succeeded")


def problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["type"].endswith(f"/{slug}"), body
    return body


def test_reclustering_a_job_that_has_not_succeeded_is_409(
    client: TestClient, submit: Callable[..., httpx.Response]
) -> None:
    queued = submit().json()  # never run
    body = problem(recluster(client, queued["id"], 2), 409, "job_not_succeeded")
    assert body["state"] == "queued"
    cancelled = client.post(f"/jobs/{queued['id']}/cancel").json()
    problem(recluster(client, cancelled["id"], 2), 409, "job_not_succeeded")


@pytest.mark.parametrize(
    ("body", "field"),
    [({"k": 1}, "k"), ({"k": 1001}, "k"), ({"k": "3"}, "k"), ({"k": 2.5}, "k"), ({}, "k"),
     ({"k": 2, "method": "imc"}, "method")],
)
def test_a_bad_k_is_422(client: TestClient, succeeded_job: Job, body: dict[str, Any], field: str) -> None:
    response = client.post(f"/jobs/{succeeded_job['id']}/reclusterings", json=body)
    found = problem(response, 422, "invalid_request")
    assert field in [error["field"] for error in found["errors"]]


def test_k_as_an_integral_json_number_is_taken(client: TestClient, succeeded_job: Job) -> None:
    assert recluster(client, succeeded_job["id"], 3.0).json()["k"] == 3


def test_k_above_the_clustered_images_is_422(client: TestClient, succeeded_job: Job) -> None:
    body = problem(recluster(client, succeeded_job["id"], 21), 422, "too_few_images")
    assert body["images"] == 20 and body["errors"][0]["field"] == "k"
    assert recluster(client, succeeded_job["id"], 20).status_code == 202  # one image per cluster


def test_an_unknown_job_is_404(client: TestClient) -> None:
    problem(recluster(client, str(uuid.uuid4()), 2), 404, "job_not_found")
    problem(recluster(client, "not-a-uuid", 2), 404, "job_not_found")


def test_a_job_without_kept_embeddings_is_409(client: TestClient, succeeded_job: Job, settings: Settings) -> None:
    blobs.embeddings_path(settings, uuid.UUID(succeeded_job["id"])).unlink()
    problem(recluster(client, succeeded_job["id"], 2), 409, "job_not_reclusterable")


def test_an_idempotent_retry_returns_the_same_reclustering(client: TestClient, succeeded_job: Job) -> None:
    headers = {"Idempotency-Key": "again-at-2"}
    first = recluster(client, succeeded_job["id"], 2, headers=headers)
    second = recluster(client, succeeded_job["id"], 2, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert len(client.get(f"/jobs/{succeeded_job['id']}").json()["reclusterings"]) == 1
    problem(recluster(client, succeeded_job["id"], 3, headers=headers), 422, "idempotency_key_reused")


def test_keys_see_only_their_own_jobs(
    client: TestClient, submit: Callable[..., httpx.Response], sessions: sessionmaker[Session],
    settings: Settings,
) -> None:
    with sessions() as session, session.begin():  # before any request: keys are on from the start
        _, alice = keys.create_key(session, name="alice")
        _, bob = keys.create_key(session, name="bob")
    as_alice, as_bob = {"Authorization": f"Bearer {alice}"}, {"Authorization": f"Bearer {bob}"}
    source = submit(headers=as_alice).json()
    run(settings, sessions, source["id"])
    problem(recluster(client, source["id"], 2), 401, "unauthorized")
    problem(recluster(client, source["id"], 2, headers=as_bob), 404, "job_not_found")
    mine = recluster(client, source["id"], 2, headers=as_alice)
    assert mine.status_code == 202
    problem(client.get(f"/jobs/{mine.json()['id']}", headers=as_bob), 404, "job_not_found")
    assert client.get(f"/jobs/{mine.json()['id']}", headers=as_alice).status_code == 200


def test_the_active_job_limit_counts_reclusterings(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session],
    submit: Callable[..., httpx.Response],
) -> None:
    client.app.state.settings = settings.model_copy(update={"max_active_jobs_per_key": 2})  # type: ignore[attr-defined]
    with sessions() as session, session.begin():
        _, plain = keys.create_key(session, name="mine")
    headers = {"Authorization": f"Bearer {plain}"}
    source = submit(headers=headers).json()
    run(settings, sessions, source["id"])
    assert recluster(client, source["id"], 2, headers=headers).status_code == 202
    assert recluster(client, source["id"], 3, headers=headers).status_code == 202
    body = problem(recluster(client, source["id"], 2, headers=headers), 429, "too_many_active_jobs")
    assert "2 queued or running" in body["detail"]


def test_an_auto_k_job_records_its_choice(
    client: TestClient, submit: Callable[..., httpx.Response], settings: Settings,
    sessions: sessionmaker[Session],
) -> None:
    from tests.conftest import make_zip

    response = submit(make_zip(per_class=8), json.dumps({"k": "auto", "k_max": 6, "method": "kmeans"}))
    assert response.status_code == 202, response.text
    queued = response.json()
    assert queued["k"] is None and queued["params"]["k"] is None and queued["params"]["k_max"] == 6
    run(settings, sessions, queued["id"])
    job = client.get(f"/jobs/{queued['id']}").json()
    choice = job["k_selection"]
    assert job["k"] == choice["k"] == client.get(f"/jobs/{queued['id']}/clusters").json()["k"]
    assert choice["k_max"] == 6 and choice["criterion"]
    tried = [score["k"] for score in choice["scores"]]
    assert tried == sorted(tried) and choice["k"] in tried and max(tried) <= 6
    page = client.get(f"/ui/jobs/{queued['id']}").text
    assert 'id="k-choice"' in page and page.count('class="k-score') == len(tried)
    assert page.count('class="k-score chosen"') == 1
    assert choice["note"] is None and "the highest" in page and 'id="k-note"' not in page  # k-means: the best k
    with sessions() as session, session.begin():  # a choice that kept a lower-scoring k, as IMC-SwAV's can
        stored = session.get(JobRow, uuid.UUID(queued["id"]))
        assert stored is not None
        stored.k_selection = {**choice, "note": "k = 2 scored highest, but the classifier was kept"}
    assert client.get(f"/jobs/{queued['id']}").json()["k_selection"]["note"].startswith("k = 2 scored highest")
    page = client.get(f"/ui/jobs/{queued['id']}").text
    assert 'id="k-note">k = 2 scored highest, but the classifier was kept<' in page and "the highest" not in page


@pytest.mark.parametrize("params", [{"method": "kmeans"}, {"k": None, "method": "kmeans"}])
def test_k_may_be_omitted(submit: Callable[..., httpx.Response], params: dict[str, Any]) -> None:
    response = submit(params=params)
    assert response.status_code == 202, response.text
    assert response.json()["k"] is None


@pytest.mark.parametrize(
    ("params", "field"),
    [({"k": 3, "k_max": 5}, "params.k_max"), ({"k_max": 1}, "params.k_max"), ({"k_max": 1001}, "params.k_max"),
     ({"k": "several"}, "params.k"), ({"k_max": "10"}, "params.k_max")],
)
def test_bad_k_max_is_422(submit: Callable[..., httpx.Response], params: dict[str, Any], field: str) -> None:
    body = problem(submit(params=params), 422, "invalid_params")
    assert [error["field"] for error in body["errors"]] == [field]


def test_choosing_k_needs_two_images(submit: Callable[..., httpx.Response]) -> None:
    from tests.conftest import COLOURS, png_bytes

    one = io.BytesIO()
    with zipfile.ZipFile(one, "w") as archive:
        archive.writestr("red.png", png_bytes(COLOURS["red"], np.random.default_rng(0)))
    body = problem(submit(one.getvalue(), {"method": "kmeans"}), 422, "too_few_images")
    assert "choosing k" in body["detail"]

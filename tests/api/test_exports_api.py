import io
import json
import uuid
import zipfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from store import blobs
from store.settings import Settings
from tests.api.conftest import HOSTILE

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])  # the worker's heartbeat thread commits


def test_assignments_export_as_jsonl_and_parquet_match_the_json_pages(
    client: TestClient, succeeded_job: dict  # type: ignore[type-arg]
) -> None:
    url = f"/jobs/{succeeded_job['id']}/assignments"
    pages = client.get(url, params={"limit": 1000}).json()["items"]
    response = client.get(url, params={"format": "jsonl"})
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines == pages and len(lines) == 20
    assert {line["path"] for line in lines} >= set(HOSTILE)  # data, not neutralised

    response = client.get(url, params={"format": "parquet"})
    assert response.status_code == 200 and "attachment" in response.headers["content-disposition"]
    table = pq.read_table(io.BytesIO(response.content)).to_pylist()
    assert [(r["image_id"], r["path"], r["cluster"]) for r in table] == [
        (p["image_id"], p["path"], p["cluster"]) for p in pages
    ]
    assert client.get(url, params={"format": "xml"}).status_code == 422


def test_embeddings_npy_has_one_row_per_assignment_in_upload_order(
    client: TestClient, succeeded_job: dict  # type: ignore[type-arg]
) -> None:
    url = f"/jobs/{succeeded_job['id']}"
    response = client.get(f"{url}/embeddings.npy")
    assert response.status_code == 200
    embeddings = np.load(io.BytesIO(response.content))
    assert embeddings.dtype == np.float32 and embeddings.shape == (20, 3 * 32 * 32)  # k-means: pixels at 32 px
    # rows follow the assignments: images of one folder have near-identical pixel means
    paths = [a["path"] for a in client.get(f"{url}/assignments").json()["items"]]
    means = {p.split("/")[0]: [] for p in paths}  # type: ignore[var-annotated]
    for path, row in zip(paths, embeddings, strict=True):
        means[path.split("/")[0]].append(row.reshape(3, 32, 32).mean((1, 2)))
    for name, rgb in (("red", (220, 30, 30)), ("green", (30, 200, 40)), ("blue", (30, 40, 220))):
        np.testing.assert_allclose(np.mean(means[name], axis=0) * 255, rgb, atol=4)


def test_embeddings_of_a_job_that_kept_none_are_a_404_problem(
    client: TestClient, succeeded_job: dict, settings: Settings  # type: ignore[type-arg]
) -> None:
    blobs.embeddings_path(settings, uuid.UUID(succeeded_job["id"])).unlink()
    response = client.get(f"/jobs/{succeeded_job['id']}/embeddings.npy")
    assert response.status_code == 404 and response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith("embeddings_not_found")
    assert "run it again" in response.json()["detail"]


def test_export_zip_has_a_folder_per_cluster_with_safe_names_and_the_original_bytes(
    client: TestClient, succeeded_job: dict  # type: ignore[type-arg]
) -> None:
    url = f"/jobs/{succeeded_job['id']}"
    response = client.get(f"{url}/export.zip")
    assert response.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert archive.testzip() is None
    names = archive.namelist()
    assignments = client.get(f"{url}/assignments").json()["items"]
    assert len(names) == len(assignments) == 20
    for name in names:
        folder, _, base = name.partition("/")
        assert folder.startswith("cluster-") and "/" not in base and ".." not in name
        assert all(ch.isascii() and (ch.isalnum() or ch in "._-/") for ch in name)
    by_cluster = {a["cluster"] for a in assignments}
    assert {n.split("/")[0] for n in names} == {f"cluster-{c:03d}" for c in by_cluster}
    assert all(archive.read(name).startswith(b"\x89PNG") for name in names)


def test_exports_of_an_unfinished_job_are_409_problems(client: TestClient, submit) -> None:  # type: ignore[no-untyped-def]
    job = submit().json()
    for path in ("embeddings.npy", "export.zip", "assignments?format=parquet"):
        response = client.get(f"/jobs/{job['id']}/{path}")
        assert response.status_code == 409
        assert response.headers["content-type"] == "application/problem+json"

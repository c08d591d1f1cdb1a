import csv
import io
import uuid
from collections.abc import Callable

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api import cursors
from api.routes.results import neutralise
from store.settings import Settings
from tests.conftest import COLOURS, make_zip, png_bytes
from worker.run import execute_job

Submit = Callable[..., httpx.Response]


@pytest.fixture
def finished_job(submit: Submit, settings: Settings, sessions: sessionmaker[Session]) -> dict:  # type: ignore[type-arg]
    """A succeeded k-means job whose archive has formula-like member names."""
    import numpy as np

    rng = np.random.default_rng(1)
    hostile = {f"{c}=HYPERLINK(x){i}.png": png_bytes(COLOURS["red"], rng) for i, c in enumerate("=+-@")}
    response = submit(make_zip(per_class=6, extra=hostile), {"k": 3, "method": "kmeans"})
    assert response.status_code == 202, response.text
    job_id = uuid.UUID(response.json()["id"])
    assert execute_job(job_id, settings=settings, sessions=sessions) == "succeeded"
    return response.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize("backend", ["sqlite"])  # the worker's heartbeat thread needs commits
def test_clusters_members_and_assignments(client: TestClient, finished_job: dict) -> None:  # type: ignore[type-arg]
    url = f"/jobs/{finished_job['id']}"
    job = client.get(url).json()
    assert job["state"] == "succeeded" and job["progress"]["percent"] == 100.0
    clusters = client.get(f"{url}/clusters").json()
    assert clusters["k"] == 3 and sum(c["size"] for c in clusters["clusters"]) == 22
    biggest = max(clusters["clusters"], key=lambda c: c["size"])
    reps = [r["confidence"] for r in biggest["representatives"]]
    assert reps == sorted(reps, reverse=True)

    members, cursor = [], None
    while True:
        page = client.get(
            f"{url}/clusters/{biggest['id']}/images",
            params={"limit": 4, **({"cursor": cursor} if cursor else {})},
        ).json()
        members += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(members) == biggest["size"] == len({m["image_id"] for m in members})
    assert client.get(f"{url}/clusters/99/images").status_code == 404

    seen, cursor = [], None
    while True:
        page = client.get(f"{url}/assignments", params={"limit": 5, **({"cursor": cursor} if cursor else {})}).json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 22 and len({a["image_id"] for a in seen}) == 22

    response = client.get(f"{url}/assignments", params={"format": "csv"})
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 22
    risky = [row["path"] for row in rows if "HYPERLINK" in row["path"]]
    assert len(risky) == 4 and all(path.startswith("'") for path in risky)


def test_neutralise_prefixes_formula_cells_only() -> None:
    assert [neutralise(c) for c in ("=1+1", "+1", "-1", "@x", "\tx", "red/1.png")] == [
        "'=1+1",
        "'+1",
        "'-1",
        "'@x",
        "'\tx",
        "red/1.png",
    ]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_forged_cursors_and_impossible_clusters_are_4xx_not_500(client: TestClient, finished_job: dict) -> None:  # type: ignore[type-arg]
    url = f"/jobs/{finished_job['id']}"
    forged = {
        f"{url}/clusters/0/images": [("high", "x"), (0.5, 2**70), (0.5, -1), (0.5,)],
        f"{url}/assignments": [("a",), (2**70,), (1.5,), (None,), (1, 2)],
    }
    for path, cursors_ in forged.items():
        for values in cursors_:
            response = client.get(path, params={"cursor": cursors.encode(*values)})
            assert response.status_code == 400, (path, values, response.text)
            assert response.json()["type"].endswith("/invalid_cursor")
    for cluster in (-1, 2**70, 1000):
        assert client.get(f"{url}/clusters/{cluster}/images").status_code == 422, cluster
    assert client.get(f"{url}/clusters/0/images", params={"cursor": cursors.encode(2.0, 0)}).status_code == 200

import io
import json
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image as PILImage
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api import cursors
from core.config import DEFAULT_METHOD
from store import blobs, jobs, keys
from store.models import Image, Job, JobState
from store.settings import Settings
from tests.conftest import make_zip

Submit = Callable[..., httpx.Response]


def assert_problem(response: httpx.Response, status: int) -> dict:  # type: ignore[type-arg]
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["type"] and body["title"] and body["detail"]
    assert "Traceback" not in response.text
    return body  # type: ignore[no-any-return]


def assert_nothing_left(session: Session, settings: Settings) -> None:
    assert session.scalar(select(func.count()).select_from(Job)) == 0
    assert session.scalar(select(func.count()).select_from(Image)) == 0
    assert blobs.job_ids_on_disk(settings) == []


def test_post_job_answers_202_with_location_and_records_images(
    submit: Submit, client: TestClient, settings: Settings, session: Session
) -> None:
    response = submit(params={"k": 3, "method": "kmeans", "name": "colours"})
    assert response.status_code == 202, response.text
    body = response.json()
    assert response.headers["location"] == f"/jobs/{body['id']}"
    assert body["state"] == "queued" and body["name"] == "colours"
    assert body["counts"]["images"] == 30 and body["params"]["k"] == 3
    assert client.get(response.headers["location"]).json()["id"] == body["id"]
    job_id = uuid.UUID(body["id"])
    assert [p.name for p in blobs.images_dir(settings, job_id).iterdir()] == [blobs.PACK_NAME]
    stored = [blobs.read_image(settings, job_id, row) for row in jobs.list_images(session, job_id=job_id)]
    assert len(stored) == 30 and all(data.startswith(b"\x89PNG\r\n\x1a\n") for data in stored)
    assert not blobs.upload_path(settings, uuid.UUID(body["id"])).exists()
    assert len(list((settings.broker_dir / "queue").iterdir())) == 1  # enqueued


def test_a_job_without_a_method_records_the_default_one(submit: Submit) -> None:
    body = submit(params={"k": 3}).json()
    assert body["params"]["method"] == DEFAULT_METHOD == "auto"
    assert body["progress"]["method"] is None  # settled by the worker


def test_a_time_budget_is_recorded_and_progress_has_room_for_its_plan(submit: Submit) -> None:
    body = submit(params={"k": 3, "time_budget_s": 90}).json()
    assert body["params"]["time_budget_s"] == 90 and body["params"]["epochs"] is None
    assert body["progress"]["expected_end_at"] is None  # planned once the worker has probed


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"k": "some", "method": "kmeans"}, "params.k"),  # omitted, null or "auto": chosen
        ({"k": 3, "k_max": 8}, "params.k_max"),  # k_max only when k is chosen
        ({"k_max": 1001}, "params.k_max"),
        ({"k": 1}, "params.k"),
        ({"k": 1001}, "params.k"),
        ({"k": 3, "method": "dbscan"}, "params.method"),
        ({"k": "3"}, "params.k"),
        ({"k": 3, "epochs": 1.5}, "params.epochs"),
        ({"k": 3, "time_budget_s": -60}, "params.time_budget_s"),
        ({"k": 3, "time_budget_s": 5}, "params.time_budget_s"),  # no room for setup and an epoch
        ({"k": 3, "time_budget_s": 1e9}, "params.time_budget_s"),
        ({"k": 3, "time_budget_s": "10m"}, "params.time_budget_s"),
        ({"k": 3, "colour": "red"}, "params.colour"),
        ("{not json", "params"),
        ("[3]", "params"),
    ],
)
def test_post_job_with_bad_params_is_422_naming_the_field_and_leaves_nothing(
    submit: Submit, session: Session, settings: Settings, params: object, field: str
) -> None:
    body = assert_problem(submit(params=params), 422)
    assert field in [error["field"] for error in body["errors"]]
    assert field in body["detail"]
    assert_nothing_left(session, settings)


def test_post_job_without_archive_is_422(client: TestClient) -> None:
    body = assert_problem(client.post("/jobs", data={"params": '{"k": 3}'}), 422)
    assert "archive" in body["detail"]


def test_post_job_with_fewer_images_than_k_is_422_with_counts(
    submit: Submit, session: Session, settings: Settings
) -> None:
    data = make_zip(per_class=1, extra={"notes.txt": b"hello"})
    body = assert_problem(submit(data, {"k": 5, "method": "kmeans"}), 422)
    assert body["images"] == 3 and body["k"] == 5 and body["skipped"] >= 1
    assert_nothing_left(session, settings)


def test_post_job_with_something_not_an_archive_is_415_and_leaves_nothing(
    submit: Submit, session: Session, settings: Settings
) -> None:
    assert_problem(submit(b"just some text, named .zip", {"k": 3}), 415)
    assert_nothing_left(session, settings)


def many_images_zip(n: int, extra: dict[str, tuple[bytes, int]] | None = None) -> tuple[bytes, dict[str, bytes]]:
    """`n` distinct 8x8 grey PNGs in two folders, listed out of path order, plus `extra` members
    (bytes, compression); returns the zip and the images by path."""
    images = {}
    for i in reversed(range(n)):
        out = io.BytesIO()
        PILImage.new("L", (8, 8), i % 256).save(out, "PNG")
        images[f"{'ab'[i % 2]}/{i:05d}.png"] = out.getvalue() + bytes(i // 256)  # trailing: distinct
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in images.items():
            archive.writestr(name, data)
        for name, (data, compression) in (extra or {}).items():
            archive.writestr(name, data, compression)
    return buffer.getvalue(), images


def test_post_job_with_many_images_records_every_row_and_its_bytes(
    submit: Submit, settings: Settings, session: Session
) -> None:
    data, images = many_images_zip(3_000)
    response = submit(data, {"k": 2, "method": "kmeans"})
    assert response.status_code == 202, response.text
    job_id = uuid.UUID(response.json()["id"])
    rows = jobs.list_images(session, job_id=job_id)
    assert [row.path for row in rows] == sorted(images) and [r.seq for r in rows] == list(range(3_000))
    assert len({row.id for row in rows}) == 3_000
    for row in rows:
        assert blobs.read_image(settings, job_id, row) == images[row.path]
        assert (row.width, row.height, row.format) == (8, 8, "PNG")
    assert [p.name for p in blobs.job_dir(settings, job_id).rglob("*")] == ["images", blobs.PACK_NAME]


def test_post_job_refused_after_many_images_leaves_nothing(
    submit: Submit, session: Session, settings: Settings
) -> None:
    """The bomb comes last, after 3,000 images went into the pack: all of it goes."""
    data, _ = many_images_zip(3_000, extra={"zz/bomb.png": (bytes(16 << 20), zipfile.ZIP_DEFLATED)})
    body = assert_problem(submit(data, {"k": 2, "method": "kmeans"}), 422)
    assert "compression ratio" in body["detail"]  # the bomb's refusal, not some other 422
    assert_nothing_left(session, settings)


def test_unknown_job_is_404_problem(client: TestClient) -> None:
    for path in (
        f"/jobs/{uuid.uuid4()}",
        "/jobs/not-a-uuid",
        f"/jobs/{uuid.uuid4()}/clusters",
        f"/jobs/{uuid.uuid4()}/assignments",
    ):
        assert_problem(client.get(path), 404)
    assert_problem(client.post(f"/jobs/{uuid.uuid4()}/cancel"), 404)
    assert_problem(client.delete(f"/jobs/{uuid.uuid4()}"), 404)


def test_unknown_route_and_wrong_method_are_problems(client: TestClient) -> None:
    assert_problem(client.get("/nothing-here"), 404)
    assert_problem(client.put("/jobs"), 405)


def test_list_jobs_pages_with_a_cursor(submit: Submit, client: TestClient) -> None:
    ids = [submit().json()["id"] for _ in range(3)]
    first = client.get("/jobs", params={"limit": 2}).json()
    second = client.get("/jobs", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [j["id"] for j in first["items"] + second["items"]] == ids[::-1]
    assert second["next_cursor"] is None
    assert_problem(client.get("/jobs", params={"cursor": "garbage!"}), 400)
    assert_problem(client.get("/jobs", params={"limit": 0}), 422)


def test_cancel_a_queued_job_then_cancel_again_is_409(submit: Submit, client: TestClient) -> None:
    job = submit().json()
    response = client.post(f"/jobs/{job['id']}/cancel")
    assert response.status_code == 202 and response.json()["state"] == "cancelled"
    body = assert_problem(client.post(f"/jobs/{job['id']}/cancel"), 409)
    assert body["state"] == "cancelled"


def test_delete_a_running_job_is_409_and_a_queued_one_goes_entirely(
    submit: Submit, client: TestClient, session: Session, settings: Settings
) -> None:
    running, queued = submit().json(), submit().json()
    row = jobs.get_job(session, job_id=uuid.UUID(running["id"]))
    assert row is not None and jobs.claim_job(session, job=row, worker_id="w:1")
    session.commit()
    assert_problem(client.delete(f"/jobs/{running['id']}"), 409)
    assert client.delete(f"/jobs/{queued['id']}").status_code == 204
    assert client.get(f"/jobs/{queued['id']}").status_code == 404
    assert not blobs.job_dir(settings, uuid.UUID(queued["id"])).exists()
    count = session.scalar(select(func.count()).select_from(Image).where(Image.job_id == uuid.UUID(queued["id"])))
    assert count == 0


def test_results_of_an_unfinished_job_are_409(submit: Submit, client: TestClient) -> None:
    job = submit().json()
    for suffix in ("clusters", "assignments", "clusters/0/images"):
        assert assert_problem(client.get(f"/jobs/{job['id']}/{suffix}"), 409)["state"] == "queued"


def test_idempotency_key_returns_the_first_job_and_refuses_a_different_request(
    submit: Submit, session: Session
) -> None:
    headers = {"Idempotency-Key": "abc-123"}
    archive = make_zip()
    first = submit(archive, params={"k": 3}, headers=headers)
    again = submit(archive, params={"k": 3}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert_problem(submit(archive, params={"k": 4}, headers=headers), 422)
    count = select(func.count()).select_from(Job).where(Job.idempotency_key == "abc-123")
    assert session.scalar(count) == 1


def test_unexpected_errors_are_500_problems_without_a_trace(app: object, settings: Settings) -> None:
    def broken() -> None:
        raise RuntimeError("secret internals")

    app.router.add_api_route("/boom", broken)  # type: ignore[attr-defined]
    with TestClient(app, raise_server_exceptions=False) as client:  # type: ignore[arg-type]
        response = client.get("/boom")
    assert "secret internals" not in assert_problem(response, 500)["detail"]


def test_health_and_ready(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ready", "database": True, "broker": True}


@pytest.mark.parametrize("backend", ["postgres"])
def test_ready_is_503_when_database_or_broker_is_unreachable(settings: Settings) -> None:
    from api.main import create_app
    from tests.conftest import CLOSED_PORT

    for changes, down in (
        ({"database_url": f"postgresql+psycopg://postgres@127.0.0.1:{CLOSED_PORT}/x"}, "database"),
        ({"broker_url": f"redis://127.0.0.1:{CLOSED_PORT}/0"}, "broker"),
    ):
        with TestClient(create_app(settings.model_copy(update=changes))) as client:
            body = assert_problem(client.get("/ready"), 503)
            assert body[down] is False


@pytest.mark.parametrize("backend", ["postgres"])
def test_database_down_is_503_not_500(settings: Settings) -> None:
    from api.main import create_app
    from tests.conftest import CLOSED_PORT

    down = settings.model_copy(update={"database_url": f"postgresql+psycopg://postgres@127.0.0.1:{CLOSED_PORT}/x"})
    with TestClient(create_app(down), raise_server_exceptions=False) as client:
        assert_problem(client.get("/jobs"), 503)
        assert_problem(client.get(f"/jobs/{uuid.uuid4()}"), 503)


def test_body_over_the_limit_is_413_with_or_without_content_length(
    app: object, settings: Settings, session: Session
) -> None:
    from api.main import create_app

    small = create_app(settings.model_copy(update={"max_upload_bytes": 1000}))
    small.state.sessions = app.state.sessions  # type: ignore[attr-defined]
    data = make_zip(per_class=10)
    with TestClient(small) as client:
        files = {"archive": ("a.zip", data, "application/zip")}
        assert_problem(client.post("/jobs", files=files, data={"params": '{"k": 3}'}), 413)

        def chunked():  # type: ignore[no-untyped-def]
            # no Content-Length: the cap must be enforced while the body streams
            yield b'--x\r\nContent-Disposition: form-data; name="params"\r\n\r\n{"k": 3}\r\n'
            yield b'--x\r\nContent-Disposition: form-data; name="archive"; filename="a.zip"\r\n\r\n'
            for _ in range(40):  # 2.5 MiB, past the body cap (1000 bytes + multipart slack)
                yield bytes(64 * 1024)
            yield b"\r\n--x--\r\n"

        response = client.post("/jobs", content=chunked(), headers={"Content-Type": "multipart/form-data; boundary=x"})
        assert_problem(response, 413)
    assert_nothing_left(session, settings)


def test_api_keys_guard_every_endpoint_but_health_and_scope_jobs(
    submit: Submit, client: TestClient, session: Session, settings: Settings
) -> None:
    _, alice = keys.create_key(session, name="alice")
    _, bob = keys.create_key(session, name="bob")
    session.commit()
    assert client.get("/health").status_code == 200
    assert_problem(client.get("/jobs"), 401)
    assert_problem(client.get("/jobs", headers={"Authorization": "Bearer wrong"}), 401)
    as_alice = {"Authorization": f"Bearer {alice}"}
    job = submit(headers=as_alice).json()
    assert client.get(f"/jobs/{job['id']}", headers=as_alice).status_code == 200
    as_bob = {"Authorization": f"Bearer {bob}"}
    assert_problem(client.get(f"/jobs/{job['id']}", headers=as_bob), 404)
    assert client.get("/jobs", headers=as_bob).json()["items"] == []
    row = session.scalar(select(keys.ApiKey).where(keys.ApiKey.name == "alice"))
    assert row is not None and alice not in (row.key_hash, row.prefix)


def test_per_key_active_job_limit_is_429_with_retry_after(
    app: object, submit: Submit, session: Session, settings: Settings
) -> None:
    app.state.settings = settings.model_copy(update={"max_active_jobs_per_key": 1})  # type: ignore[attr-defined]
    _, key = keys.create_key(session, name="k")
    session.commit()
    headers = {"Authorization": f"Bearer {key}"}
    assert submit(headers=headers).status_code == 202
    response = submit(headers=headers)
    assert_problem(response, 429)
    assert int(response.headers["retry-after"]) > 0


def test_openapi_lists_problem_responses(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    post = spec["paths"]["/jobs"]["post"]["responses"]
    assert {"202", "413", "415", "422", "429"} <= set(post)
    assert "application/problem+json" in post["422"]["content"]
    assert client.get("/docs").status_code == 200


def test_orphan_upload_folders_are_swept_at_start(app: object, settings: Settings) -> None:
    from api.main import sweep_orphans

    orphan = uuid.uuid4()
    blobs.new_job_dir(settings, orphan)
    (blobs.upload_path(settings, orphan)).write_bytes(b"half an upload")
    assert sweep_orphans(app, older_than_s=0) == 1  # type: ignore[arg-type]
    assert not blobs.job_dir(settings, orphan).exists()
    assert isinstance(json.dumps({}), str) and isinstance(Path("."), Path)
    assert JobState.QUEUED == "queued"


@pytest.mark.parametrize(
    "values",
    [("2024-01-01T00:00:00+00:00", 5), (1, 2), ("yesterday", str(uuid.uuid4())), ("2024-01-01", "no-uuid"), ("x",)],
)
def test_list_jobs_refuses_a_forged_cursor_with_400_not_500(client: TestClient, values: tuple[object, ...]) -> None:
    body = assert_problem(client.get("/jobs", params={"cursor": cursors.encode(*values)}), 400)
    assert body["type"].endswith("/invalid_cursor")

import io
import re

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from store import blobs
from store.settings import Settings

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])  # the worker's heartbeat thread commits


def test_jobs_page_lists_jobs_escaped_with_the_upload_form(
    client: TestClient, succeeded_job: dict  # type: ignore[type-arg]
) -> None:
    response = client.get("/ui")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "script-src 'self'" in response.headers["content-security-policy"]
    html = response.text
    assert '<form id="upload"' in html and 'name="archive"' in html
    assert "&lt;i&gt;colours&lt;/i&gt;" in html and "<i>colours</i>" not in html
    assert f'href="/ui/jobs/{succeeded_job["id"]}"' in html and "succeeded" in html
    assert "http://" not in html and "https://" not in html  # no external assets
    assert client.get("/ui/static/corral.js").status_code == 200


def test_job_page_shows_every_cluster_the_map_metrics_and_exports(
    client: TestClient, succeeded_job: dict  # type: ignore[type-arg]
) -> None:
    job_id = succeeded_job["id"]
    html = client.get(f"/ui/jobs/{job_id}").text
    clusters = client.get(f"/jobs/{job_id}/clusters").json()["clusters"]
    for cluster in clusters:
        assert f'id="cluster-{cluster["id"]}"' in html and f"{cluster['size']} images" in html
    assert html.count('<figure class="thumb') == 20 and html.count('class="thumb least"') >= 3
    assert html.count("<circle ") == 20  # the PCA map: one point per image
    assert 'id="confusion"' in html and "ACC <strong>" in html
    for export in ("format=csv", "format=jsonl", "format=parquet", "embeddings.npy", "export.zip"):
        assert f"/jobs/{job_id}/{'assignments?' if 'format' in export else ''}{export}" in html
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    assert re.search(r"&#3[49];quote&#3[49];", html) or "&#34;quote&#34;" in html


def test_thumbnails_are_bounded_jpegs_made_by_the_server_and_cached(
    client: TestClient, succeeded_job: dict, settings: Settings  # type: ignore[type-arg]
) -> None:
    job_id = succeeded_job["id"]
    image = client.get(f"/jobs/{job_id}/assignments").json()["items"][0]
    response = client.get(f"/jobs/{job_id}/images/{image['image_id']}/thumbnail")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert response.headers["x-content-type-options"] == "nosniff"
    preview = Image.open(io.BytesIO(response.content))
    assert preview.format == "JPEG" and max(preview.size) <= 128
    cached = blobs.thumbnails_dir(settings, blobs.uuid.UUID(job_id)) / f"{image['image_id']}.jpg"
    assert cached.read_bytes() == response.content
    other = client.get(f"/jobs/{job_id}/images/00000000-0000-0000-0000-000000000000/thumbnail")
    assert other.status_code == 404 and other.headers["content-type"] == "application/problem+json"


def test_a_queued_job_page_shows_progress_and_no_gallery(client: TestClient, submit) -> None:  # type: ignore[no-untyped-def]
    job = submit().json()
    html = client.get(f"/ui/jobs/{job['id']}").text
    assert 'data-state="queued"' in html and 'id="bar"' in html and 'id="gallery"' not in html
    assert client.get("/ui/jobs/not-a-job").status_code == 404


def test_pages_sign_in_with_a_key_through_a_strict_cookie(client: TestClient, sessions) -> None:  # type: ignore[no-untyped-def]
    from store import keys

    with sessions() as session:
        _, key = keys.create_key(session, name="ui")
        session.commit()
    first = client.get("/ui", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/ui/key"
    assert client.get("/jobs").status_code == 401  # the JSON API still answers problem+json
    wrong = client.post("/ui/key", data={"key": "crl_wrong"}, follow_redirects=False)
    assert wrong.status_code == 401 and "not valid" in wrong.text
    signed = client.post("/ui/key", data={"key": key}, follow_redirects=False)
    assert signed.status_code == 303
    cookie = signed.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert client.get("/ui").status_code == 200  # the client keeps the cookie
    assert client.get("/jobs").status_code == 200  # and the pages' same-origin fetches use it

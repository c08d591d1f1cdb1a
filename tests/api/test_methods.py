"""405 answers list every method of the path, not only the first route's."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.api.test_jobs_api import assert_problem


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("OPTIONS", "/jobs/0", "GET, DELETE"),
        ("PUT", "/jobs/0", "GET, DELETE"),
        ("OPTIONS", "/jobs", "GET, POST"),
        ("DELETE", "/jobs/0/clusters", "GET"),
        ("GET", "/jobs/0/cancel", "POST"),
    ],
)
def test_a_method_the_path_lacks_is_405_allowing_every_method_it_has(
    client: TestClient, method: str, path: str, allow: str
) -> None:
    response = client.request(method, path)
    body = assert_problem(response, 405)
    assert response.headers["allow"] == allow
    assert body["type"].endswith("/method_not_allowed") and allow in body["detail"]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_an_unknown_path_is_still_404(client: TestClient) -> None:
    assert_problem(client.request("OPTIONS", "/nowhere"), 404)

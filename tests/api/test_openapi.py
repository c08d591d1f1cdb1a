"""The OpenAPI document: problems as sent, no stock 422, links from a job's id onwards."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.openapi import JOB_OPERATIONS

PROBLEM = "#/components/schemas/Problem"


@pytest.fixture
def document(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


def operations(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {op["operationId"]: op | {"path": path} for path, item in document["paths"].items() for op in item.values()}


@pytest.mark.parametrize("backend", ["sqlite"])
def test_openapi_problems_are_problem_json_with_their_schema_only(document: dict[str, Any]) -> None:
    for op_id, operation in operations(document).items():
        for status, response in operation["responses"].items():
            if int(status) < 400:
                continue
            assert list(response["content"]) == ["application/problem+json"], (op_id, status)
            ref = response["content"]["application/problem+json"]["schema"]["$ref"]
            assert ref == (PROBLEM if status != "422" else "#/components/schemas/ValidationProblem"), (op_id, status)
            assert response["description"] not in ("Not Found", "Bad Request"), (op_id, status)  # said, not stock
    assert "HTTPValidationError" not in document["components"]["schemas"]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_openapi_documents_the_answers_each_route_can_give(document: dict[str, Any]) -> None:
    statuses = {op_id: set(op["responses"]) for op_id, op in operations(document).items()}
    assert statuses["list_jobs"] == {"200", "400", "401", "422", "503"}
    assert statuses["get_job"] == {"200", "401", "404", "503"}  # nothing in its request can be invalid
    assert statuses["delete_job"] == {"204", "401", "404", "409", "503"}
    assert statuses["create_job"] == {"202", "400", "401", "413", "415", "422", "429", "503"}
    assert statuses["predict"] == {"200", "400", "401", "404", "409", "413", "422", "500", "503", "504"}
    assert {"400", "422"} <= statuses["list_cluster_images"] and {"400", "422"} <= statuses["list_assignments"]
    retry = operations(document)["create_job"]["responses"]["429"]["headers"]["Retry-After"]
    assert retry["required"] is True


@pytest.mark.parametrize("backend", ["sqlite"])
def test_openapi_links_a_new_job_to_every_operation_that_takes_its_id(document: dict[str, Any]) -> None:
    ops = operations(document)
    takes_a_job = {op_id for op_id, op in ops.items() if "{job_id}" in op["path"] and op_id != "list_cluster_images"}
    takes_a_job.discard("get_thumbnail")  # also needs an image id: linked from the result pages
    assert set(JOB_OPERATIONS) == takes_a_job
    links = ops["create_job"]["responses"]["202"]["links"]
    assert set(links) == takes_a_job
    assert all(link["parameters"] == {"job_id": "$response.body#/id"} for link in links.values())
    assert all(link["operationId"] in ops for link in links.values())
    thumbnail = ops["list_assignments"]["responses"]["200"]["links"]["get_thumbnail"]["parameters"]
    assert thumbnail == {"job_id": "$request.path.job_id", "image_id": "$response.body#/items/0/image_id"}
    assert set(ops["list_clusters"]["responses"]["200"]["links"]) == {"list_cluster_images", "get_thumbnail"}


@pytest.mark.parametrize("backend", ["sqlite"])
def test_openapi_params_part_is_the_job_params_object_sent_as_json(document: dict[str, Any]) -> None:
    body = operations(document)["create_job"]["requestBody"]["content"]["multipart/form-data"]
    assert body["encoding"] == {"params": {"contentType": "application/json"}}
    params = document["components"]["schemas"]["Body_create_job"]["properties"]["params"]
    assert params["type"] == "object" and "required" not in params and params["additionalProperties"] is False
    assert {"const": "auto", "type": "string"} in params["properties"]["k"]["anyOf"]  # or omitted: chosen
    assert params["properties"]["method"]["enum"] == ["auto", "imc", "mmdc", "kmeans"]

"""What the OpenAPI document says beyond the route signatures: problem answers and links.

Routes declare their answers with `problems(...)` and their links with `job_links(...)`;
`install(app)` then serves FastAPI's document with every problem under
`application/problem+json` (the media type the API sends) and without FastAPI's stock 422, which
describes a body this API never sends (its 422s are problem+json, declared where they occur).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel

from api.errors import PROBLEM_JSON
from api.schemas import Problem, ValidationProblem

Responses = dict[int | str, dict[str, Any]]

# The default reading of each status; a route adds its own cases through `problems(notes=...)`.
DESCRIPTIONS: dict[int, str] = {
    400: "A malformed request",
    401: "No valid API key (unauthorized); only once keys exist or are required",
    404: "No such job for this caller (job_not_found)",
    409: "The job's state does not allow this",
    413: "The request body is over its size limit",
    415: "The upload is not a zip or tar archive",
    422: "Invalid input; `errors` lists the fields at fault when the fault is in a field",
    429: "Too many queued or running jobs for this key (too_many_active_jobs)",
    500: "The prediction process failed (prediction_failed)",
    503: "The database cannot be reached (database_unavailable); retry after Retry-After",
    504: "The model did not answer in time (prediction_timeout)",
}

# Headers every problem of that status carries.
_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}},
    429: {"Retry-After": {"required": True, "schema": {"type": "string"}}},
    503: {"Retry-After": {"required": True, "schema": {"type": "string"}}},
}

CURSOR = (
    "opaque: the `next_cursor` of the previous page, as returned; "
    "any other value answers 400 invalid_cursor"
)

BAD_CURSOR = {400: "a cursor this API did not return (invalid_cursor)"}
BAD_MULTIPART = {400: "a multipart body that cannot be parsed"}
NOT_SUCCEEDED = {409: "it has not succeeded, so it has no results (job_not_succeeded)"}

# Every operation that needs only a job id, by operationId (the route function's name); a cluster's
# images and a thumbnail also need ids that the result pages link to.
JOB_OPERATIONS = (
    "get_job",
    "cancel_job",
    "delete_job",
    "list_clusters",
    "list_assignments",
    "get_embeddings",
    "export_zip",
    "predict",
    "create_reclustering",
)


def problems(*statuses: int, notes: dict[int, str] | None = None) -> Responses:
    """OpenAPI entries for a route's problem+json answers; `notes` adds what is particular to it."""
    out: Responses = {}
    for status in statuses:
        description = DESCRIPTIONS[status]
        if notes and status in notes:
            description = f"{description}; {notes[status]}"
        entry: dict[str, Any] = {
            "model": ValidationProblem if status == 422 else Problem,
            "description": description,
            "content": {PROBLEM_JSON: {}},
        }
        if status in _HEADERS:
            entry["headers"] = _HEADERS[status]
        out[status] = entry
    return out


def job_links(job_id: str) -> dict[str, Any]:
    """OpenAPI links that carry a job id (a runtime expression) to every operation that needs one."""
    links: dict[str, Any] = {}
    for operation in JOB_OPERATIONS:
        links |= link(operation, job_id=job_id)
    return links


def link(operation: str, **parameters: str) -> dict[str, Any]:
    """One OpenAPI link: `operation`'s parameters from runtime expressions."""
    return {operation: {"operationId": operation, "parameters": parameters}}


def json_part(model: type[BaseModel]) -> dict[str, Any]:
    """The schema of a multipart part that carries `model` as JSON (the route parses the text)."""
    schema = model.model_json_schema()
    return {key: schema[key] for key in ("type", "properties", "required", "additionalProperties") if key in schema}


def operation_id(route: APIRoute) -> str:
    """The route function's name (`get_job`): short, stable, what links and clients refer to."""
    return route.name


def install(app: FastAPI) -> None:
    """Serve the document with problems under their own media type and no stock 422."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _problems_as_sent(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _problems_as_sent(document: dict[str, Any]) -> dict[str, Any]:
    # FastAPI puts a response `model` under the route's own media type (application/json) and adds
    # a 422 HTTPValidationError wherever a route has parameters; neither is what goes on the wire.
    stock = "#/components/schemas/HTTPValidationError"
    for path_item in document["paths"].values():
        for operation in path_item.values():
            responses = operation["responses"]
            for status, response in list(responses.items()):
                content = response.get("content", {})
                json_schema = content.get("application/json", {}).get("schema", {})
                if json_schema.get("$ref") == stock:
                    del responses[status]
                elif PROBLEM_JSON in content and "application/json" in content:
                    content[PROBLEM_JSON]["schema"] = content.pop("application/json")["schema"]
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return document

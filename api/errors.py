"""RFC 9457 problem+json for every error the API returns, never a stack trace."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from store.jobs import problem

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
BUSY_RETRY_AFTER_S = 1  # a connection frees in milliseconds; a client may come back soon


class ProblemError(Exception):
    """Raise from anywhere in a request to answer with a problem+json body."""

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status, self.slug, self.title, self.detail = status, slug, title, detail
        self.headers = headers or {}
        self.extra = extra


def busy() -> ProblemError:
    """The 503 for a saturated service: every database connection is in use."""
    return ProblemError(
        503,
        "service_busy",
        "Service busy",
        "every database connection is in use; retry shortly",
        headers={"Retry-After": str(BUSY_RETRY_AFTER_S)},
    )


def problem_response(
    status: int,
    slug: str,
    title: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    instance: str | None = None,
    **extra: Any,
) -> JSONResponse:
    body = problem(slug, title, status, detail, **extra)
    if instance:
        body["instance"] = instance
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def field_errors(errors: list[Any], *, skip: int = 0, prefix: str = "") -> list[dict[str, str]]:
    """Pydantic errors as [{field, message}] with dotted field names (`params.k`)."""
    out = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())][skip:]
        out.append({"field": prefix + ".".join(loc), "message": str(error.get("msg", "invalid"))})
    return out


def params_problem(error: ValidationError) -> ProblemError:
    fields = field_errors(error.errors(), prefix="params.")
    detail = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
    return ProblemError(422, "invalid_params", "Invalid job parameters", detail, errors=fields)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every exception into problem+json."""

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> Response:
        if exc.status == 401 and request.url.path.startswith("/ui") and request.method == "GET":
            return RedirectResponse("/ui/key", status_code=303)  # a page asks a person to sign in
        return problem_response(
            exc.status,
            exc.slug,
            exc.title,
            exc.detail,
            headers=exc.headers,
            instance=request.url.path,
            **exc.extra,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        # loc starts with where the value came from (body, query, path): keep it out of the name
        fields = field_errors(list(exc.errors()), skip=1)
        detail = "; ".join(f"{f['field'] or 'request'}: {f['message']}" for f in fields)
        return problem_response(
            422,
            "invalid_request",
            "Invalid request",
            detail,
            instance=request.url.path,
            errors=fields,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "HTTP error")
        slug = title.lower().replace(" ", "_")
        return problem_response(
            exc.status_code,
            slug,
            title,
            str(exc.detail),
            headers=dict(exc.headers or {}),
            instance=request.url.path,
        )

    @app.exception_handler(OperationalError)
    async def _database(request: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database unavailable: %s", exc.__class__.__name__)
        return problem_response(
            503,
            "database_unavailable",
            "Database unavailable",
            "The database cannot be reached; retry later.",
            headers={"Retry-After": "5"},
            instance=request.url.path,
        )

    @app.exception_handler(PoolTimeout)
    async def _pool_timeout(request: Request, exc: PoolTimeout) -> Response:
        # a connection taken outside the request seats (a stream, an upload) left none free
        log.warning("no database connection free within the pool timeout")
        return await _problem(request, busy())

    @app.exception_handler(DBAPIError)
    async def _dbapi(request: Request, exc: DBAPIError) -> JSONResponse:
        if exc.connection_invalidated:
            return await _database(request, OperationalError("", {}, exc.orig or exc))
        return await _unexpected(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            500,
            "internal_error",
            "Internal server error",
            "An unexpected error occurred; it has been logged.",
            instance=request.url.path,
        )

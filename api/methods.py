"""405 answers whose `Allow` lists every method the path has (RFC 9110 §15.5.6).

Starlette answers with the methods of the first route whose path matched, and FastAPI makes one
route per method, so `OPTIONS /jobs/{id}` said `Allow: GET` though DELETE is there too. There is
no CORS preflight to serve, so OPTIONS is one more method a path does not have.
"""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match, Mount
from starlette.types import Scope

from api.errors import problem_response

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(routes: Iterable[BaseRoute], scope: Scope) -> list[str]:
    """The methods some route answers on this request's path.

    Asked of each route through `matches()` with the method swapped: FastAPI nests included
    routers in routes of its own, and this is the one question every kind of route answers. A
    mount matches a path whatever the method, so it says nothing here.
    """
    routes = [route for route in routes if not isinstance(route, Mount)]
    return [
        method
        for method in METHODS
        if any(route.matches({**scope, "method": method})[0] == Match.FULL for route in routes)
    ]


async def method_not_allowed(request: Request, exc: HTTPException) -> JSONResponse:
    """The 405 problem, with the full `Allow`."""
    allow = ", ".join(allowed_methods(request.app.router.routes, request.scope))
    allow = allow or (exc.headers or {}).get("Allow", "")  # a mount's own 405: its word stands
    return problem_response(
        405,
        "method_not_allowed",
        "Method not allowed",
        f"{request.method} is not allowed on {request.url.path}" + (f"; allowed: {allow}" if allow else ""),
        headers={"Allow": allow} if allow else None,
        instance=request.url.path,
    )

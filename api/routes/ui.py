"""Server-rendered pages: /ui (jobs and the upload form) and /ui/jobs/{id} (progress, gallery).

The pages call the same JSON API from the browser (upload, progress); everything they render
goes through Jinja2 with autoescaping. No external assets: CSS and JS come from api/static.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Form
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, PackageLoader, select_autoescape

from api import pages
from api.deps import CallerDep, JobDep, SessionDep, SettingsDep
from api.schemas import job_out
from core.config import BOUNDS, METHOD_NAMES
from store import blobs, jobs, keys, results
from store.models import JobState

router = APIRouter(prefix="/ui", include_in_schema=False)

TEMPLATES = Environment(
    loader=PackageLoader("api", "templates"), autoescape=select_autoescape(default=True)
)
# Same-origin only; no inline script or style, so an escaped name can never become code.
CSP = (
    "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def render(name: str, **context: Any) -> HTMLResponse:
    html = TEMPLATES.get_template(name).render(**context)
    return HTMLResponse(html, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"})


KEY_COOKIE = "corral_key"


@router.get("/key", response_class=HTMLResponse)
def key_page() -> HTMLResponse:
    """Sign in with an API key; the pages then act with it through a cookie."""
    return render("key.html", error=None)


@router.post("/key", response_class=HTMLResponse, response_model=None)
def key_submit(session: SessionDep, key: Annotated[str, Form()]) -> HTMLResponse | RedirectResponse:
    if keys.find_key(session, plain=key.strip()) is None:
        response = render("key.html", error="That key is not valid.")
        response.status_code = 401
        return response
    redirect = RedirectResponse("/ui", status_code=303)
    # HttpOnly: page scripts never read it; SameSite=Strict: no other site can post with it
    redirect.set_cookie(KEY_COOKIE, key.strip(), httponly=True, samesite="strict", path="/")
    return redirect


@router.get("", response_class=HTMLResponse)
def jobs_page(session: SessionDep, caller: CallerDep) -> HTMLResponse:
    """The newest jobs and the upload form."""
    rows = jobs.list_jobs(session, limit=100, before=None, owner_id=caller.key_id)
    return render("jobs.html", jobs=[job_out(job) for job in rows], methods=METHOD_NAMES, bounds=BOUNDS)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(job: JobDep, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    """Live progress; once succeeded, clusters with thumbnails, the embedding map and metrics."""
    context: dict[str, Any] = {
        "job": job_out(job),
        "clusters": [],
        "points": [],
        "confusion": None,
        "k_plot": pages.k_choice_plot(job.k_selection),
        "reclusterings": jobs.list_reclusterings(session, job_id=job.id),
        "k_low": BOUNDS["k"][0],
        "k_high": min(BOUNDS["k"][1], job.n_clustered or 0),
    }
    if job.state == JobState.SUCCEEDED:
        k = int(job.k or job.params["k"])
        rows = list(results.iter_assignments(session, job_id=job.id))
        labels = np.array([row.cluster for row in rows], dtype=np.int64)
        context |= {
            "clusters": pages.cluster_views(rows, k),
            "points": pages.embedding_map(blobs.embeddings_path(settings, job.images_job_id), labels),
            "confusion": pages.confusion(rows, k) if job.metrics else None,
            "side": pages.MAP_SIDE,
        }
    return render("job.html", **context)

"""A finished job's files: embeddings as .npy and the images as a zip of per-cluster folders."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, StreamingResponse

from api import exports, thumbnails
from api.deps import JobDep, SessionDep, SettingsDep
from api.errors import ProblemError
from api.openapi import NOT_SUCCEEDED, problems
from api.routes.results import require_artifact, require_results
from store import blobs, results

router = APIRouter(prefix="/jobs/{job_id}", tags=["results"])


@router.get(
    "/embeddings.npy",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}},
        **problems(401, 404, 409, 503, notes={
            404: "or it finished before embeddings were kept (embeddings_not_found)", **NOT_SUCCEEDED}),
    },
)
def get_embeddings(job: JobDep, settings: SettingsDep) -> FileResponse:
    """float32 (N, d) NumPy array; row i is the i-th assignment in upload order."""
    embeddings = blobs.embeddings_path(settings, job.images_job_id)  # a re-clustering's: its source's
    path = require_artifact(job, embeddings, "embeddings_not_found", "No embeddings",
                            f"job {job.id} finished before embeddings were kept; run it again to get them")
    return FileResponse(
        path, media_type="application/octet-stream", filename=f"{job.id}-embeddings.npy"
    )


@router.get(
    "/export.zip",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/zip": {}}}, **problems(401, 404, 409, 503, notes=NOT_SUCCEEDED)},
)
def export_zip(request: Request, job: JobDep, settings: SettingsDep) -> StreamingResponse:
    """Every image in a folder per cluster (`cluster-003/000042-name.png`), streamed."""
    require_results(job)
    stream = exports.zip_stream(request.app.state.sessions, settings, job.id, job.images_job_id)
    headers = {"Content-Disposition": f'attachment; filename="{job.id}-clusters.zip"'}
    return StreamingResponse(stream, media_type="application/zip", headers=headers)


@router.get(
    "/images/{image_id}/thumbnail",
    response_class=FileResponse,
    responses={
        200: {"content": {"image/jpeg": {}}},
        **problems(401, 404, 409, 422, 503, notes={
            404: "or it has no such image (image_not_found)", 409: NOT_SUCCEEDED[409], 422: "image_id is not a UUID"}),
    },
)
def get_thumbnail(
    job: JobDep, image_id: uuid.UUID, session: SessionDep, settings: SettingsDep
) -> FileResponse:
    """A JPEG preview of at most 128 px made by the server (never the uploaded bytes)."""
    require_results(job)
    row = results.get_image_file(session, job_id=job.id, image_id=image_id)
    if row is None:
        raise ProblemError(
            404, "image_not_found", "Image not found", f"job {job.id} has no image {image_id}"
        )
    path = thumbnails.thumbnail_path(settings, job.images_job_id, row)  # a source's images, a source's cache
    return FileResponse(
        path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"}
    )

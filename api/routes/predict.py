"""POST /jobs/{id}/predict: clusters and confidences of new images, without retraining."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, File, Request, UploadFile

from api.deps import JobDep, SettingsDep
from api.openapi import BAD_MULTIPART, NOT_SUCCEEDED, problems
from api.prediction import predict_uploads
from api.routes.results import require_artifact
from api.schemas import PredictionOut, PredictOut
from store import blobs

router = APIRouter(prefix="/jobs/{job_id}", tags=["results"])


@router.post(
    "/predict",
    response_model=PredictOut,
    responses=problems(400, 401, 404, 409, 413, 422, 500, 503, 504, notes={
        **BAD_MULTIPART,
        404: "or it finished before models were kept (model_not_found)",
        413: "an image over the per-file limit (image_too_large), or the whole body (body_too_large)",
        422: "no image, or more than the per-request limit",
        **NOT_SUCCEEDED,
    }),
)
async def predict(
    request: Request,
    job: JobDep,
    settings: SettingsDep,
    images: Annotated[list[UploadFile], File(description="one or more image files")],
) -> PredictOut:
    """Assign new images to this job's clusters with its trained model."""
    model = require_artifact(job, blobs.model_path(settings, job.id), "model_not_found", "No model",
                             f"job {job.id} finished before models were kept; run it again to predict")
    found = await predict_uploads(model, images, settings, request.app.state.predict_slots)
    return PredictOut(
        job_id=job.id,
        k=int(job.k or job.params["k"]),
        predictions=[PredictionOut(**asdict(p)) for p in found],
    )

"""Request and response bodies; what OpenAPI shows at /docs."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
)
from pydantic_core import PydanticCustomError

from core.config import BOUNDS, DEFAULT_METHOD, Method


def _bounded(name: str, **kwargs: Any) -> Any:
    """A Field with core's bounds for parameter `name` (core.config.BOUNDS, their one home)."""
    low, high = BOUNDS[name]
    return Field(ge=low, le=high, **kwargs)


class JobParams(BaseModel):
    """The `params` part of POST /jobs. Unknown fields and wrong JSON types are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    k: Annotated[int, _bounded("k")] | Literal["auto"] | None = Field(
        default=None,
        description='number of clusters; omitted, null or "auto": chosen after training (up to k_max)',
    )
    k_max: int | None = _bounded(
        "k_max", default=None,
        description="largest k tried when k is chosen (default 50; capped at the image count)",
    )
    method: Method = Field(
        default=DEFAULT_METHOD,
        description="auto (the default: IMC-SwAV, or MMDC where a short job on grey-scale images leaves "
                    "IMC-SwAV too few steps; progress.method names the one that trains), imc (IMC-SwAV), "
                    "mmdc or kmeans (pixels)",
    )
    epochs: int | None = _bounded("epochs", default=None, description="default: per method")
    time_budget_s: float | None = _bounded(
        "time_budget_s", default=None, allow_inf_nan=False,
        description="seconds the job may train; the epochs are fitted to it (given epochs win)",
    )
    seed: int = _bounded("seed", default=0)
    image_size: int | None = _bounded("image_size", default=None, description="working size, px")
    batch_size: int | None = _bounded("batch_size", default=None)
    name: str | None = Field(default=None, max_length=200)

    @field_validator("k", mode="wrap")
    @classmethod
    def _one_message_for_k(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """One error for k, not one per member of its union."""
        try:
            return handler(value)
        except ValidationError:
            low, high = BOUNDS["k"]
            raise PydanticCustomError(
                "k", f'must be an integer from {low} to {high}, or "auto" (or omitted)'
            ) from None

    @field_validator("k_max")
    @classmethod
    def _k_max_needs_auto_k(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("k", "auto") not in (None, "auto"):
            raise PydanticCustomError("k_max", 'applies only when k is chosen: omit k (or send "auto")')
        return value

    @property
    def k_fixed(self) -> int | None:
        """The k asked for; None when the job chooses it."""
        return None if self.k == "auto" else self.k

    def cluster_config(self) -> dict[str, Any]:
        """The fields that go into core.config.ClusterConfig (k None: chosen after training)."""
        config = self.model_dump(exclude={"name", "k_max"}) | {"k": self.k_fixed}
        if self.k_max is not None:  # else core's default; old rows never carry the key
            config["k_max"] = self.k_max
        return config


class ReclusterParams(BaseModel):
    """The body of POST /jobs/{id}/reclusterings."""

    model_config = ConfigDict(extra="forbid", strict=True)

    k: int = _bounded("k", description="number of clusters; at most the images the job clustered")

    @field_validator("k", mode="before")
    @classmethod
    def _integral_number(cls, value: Any) -> Any:
        """JSON Schema's integer: 15.0 is one too (a JSON body may carry it)."""
        return int(value) if isinstance(value, float) and value.is_integer() else value


class Problem(BaseModel):
    """RFC 9457 problem details; `errors` lists the fields at fault on 422."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None


class FieldError(BaseModel):
    field: str = Field(description="dotted name: `params.k`, `limit`, `archive`")
    message: str


class ValidationProblem(Problem):
    """A 422: the fields at fault when the fault is in a field (an archive's content is not)."""

    errors: list[FieldError] | None = None


class ProgressOut(BaseModel):
    stage: str | None
    epoch: int | None
    epochs: int | None
    percent: float | None
    loss: float | None
    images_per_s: float | None
    updated_at: datetime | None
    time_budget_s: float | None = Field(default=None, description="the budget the epochs were fitted to")
    seconds_per_epoch: float | None = Field(default=None, description="the speed the plan was made with")
    expected_end_at: datetime | None = Field(default=None, description="when training should end, per the plan")
    method: str | None = Field(default=None, description="the method that trains: what method=auto settled on")


class SkippedEntry(BaseModel):
    path: str
    reason: str


class Counts(BaseModel):
    entries: int = Field(description="members in the archive")
    images: int = Field(description="images accepted at upload")
    skipped: int
    skipped_by_reason: dict[str, int]
    clustered: int | None = Field(description="images with an assignment (when succeeded)")


class Metrics(BaseModel):
    """Agreement with the archive's top-level folders, when it had one folder per class."""

    model_config = ConfigDict(extra="allow")

    acc: float | None = None
    nmi: float | None = None
    ari: float | None = None


class KScore(BaseModel):
    k: int
    score: float | None = Field(description="the criterion's value at this k; null where the k could not be "
                                "scored (its partition left a cluster empty or had one cluster)")


class KSelection(BaseModel):
    """How a job with k omitted chose it."""

    model_config = ConfigDict(extra="allow")

    k: int = Field(description="the k chosen")
    criterion: str = Field(description="what was maximised over the ks tried")
    k_max: int = Field(description="the largest k tried")
    scores: list[KScore] = Field(description="the criterion for every k tried, ascending k")
    note: str | None = Field(None, description="why k is not the highest-scoring k, where it is not (IMC-SwAV "
                             "keeps its trained classifier unless a fitted head is significantly higher)")


JobStateName = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]


class ReclusteringRef(BaseModel):
    id: uuid.UUID
    k: int
    state: JobStateName
    created_at: datetime


class JobOut(BaseModel):
    id: uuid.UUID
    name: str | None
    state: JobStateName
    k: int | None = Field(
        description="clusters of the result: as asked, or as chosen (null until an auto-k job succeeds)"
    )
    k_selection: KSelection | None = Field(description="how k was chosen, when it was omitted")
    source_job_id: uuid.UUID | None = Field(
        description="set on a re-clustering: the job whose images and representation it clusters again"
    )
    params: dict[str, Any]
    progress: ProgressOut
    counts: Counts
    skipped: list[SkippedEntry] = Field(description="the first 100 skipped entries")
    metrics: Metrics | None
    timings: dict[str, float] | None
    device: str | None
    error: Problem | None
    attempts: int
    resumed_from_epoch: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobDetail(JobOut):
    """GET /jobs/{id}: a job with the re-clusterings made from it."""

    reclusterings: list[ReclusteringRef] = Field(description="oldest first")


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


class ImageRef(BaseModel):
    image_id: uuid.UUID
    path: str
    confidence: float


class ClusterOut(BaseModel):
    id: int
    size: int
    mean_confidence: float
    representatives: list[ImageRef] = Field(description="highest confidence first")


class ClustersOut(BaseModel):
    job_id: uuid.UUID
    k: int
    clusters: list[ClusterOut]


class AssignmentOut(BaseModel):
    image_id: uuid.UUID
    path: str
    cluster: int
    confidence: float


class AssignmentPage(BaseModel):
    items: list[AssignmentOut]
    next_cursor: str | None


class PredictionOut(BaseModel):
    filename: str
    cluster: int | None = Field(description="null when the file could not be used")
    confidence: float | None
    skipped: str | None = Field(description="why the file was not used (not_an_image, ...)")


class PredictOut(BaseModel):
    job_id: uuid.UUID
    k: int
    predictions: list[PredictionOut] = Field(description="one per uploaded file, in upload order")


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    database: bool
    broker: bool


def _expected_end(reported_at: datetime | None, eta_s: float | None) -> datetime | None:
    """The planned end of training: the last report's time plus the seconds it said were left."""
    return None if reported_at is None or eta_s is None else reported_at + timedelta(seconds=eta_s)


def job_out(job: Any) -> JobOut:
    """The API view of a store.models.Job row."""
    return JobOut.model_validate(job_view(job))


def job_detail(job: Any, reclusterings: list[Any]) -> JobDetail:
    """GET /jobs/{id}'s view: the job and the re-clusterings made from it."""
    refs = [{"id": r.id, "k": r.k, "state": r.state, "created_at": r.created_at} for r in reclusterings]
    return JobDetail.model_validate(job_view(job) | {"reclusterings": refs})


def job_view(job: Any) -> dict[str, Any]:
    """`job_out` as plain data: one validation of it builds the nested models in pydantic-core,
    about twice as fast as a constructor call per model (a page of 50 jobs builds 300)."""
    progress_metrics = job.progress_metrics or {}
    percent = None
    if job.state == "succeeded":
        percent = 100.0
    elif job.epochs:
        percent = round(100.0 * (job.epoch or 0) / job.epochs, 1)
    reasons: dict[str, int] = {}
    for entry in job.skipped:
        reasons[entry["reason"]] = reasons.get(entry["reason"], 0) + 1
    return {
        "id": job.id,
        "name": job.name,
        "state": job.state,
        "k": job.k,
        "k_selection": job.k_selection,
        "source_job_id": job.source_job_id,
        "params": job.params,
        "progress": {
            "stage": job.stage,
            "epoch": job.epoch,
            "epochs": job.epochs,
            "percent": percent,
            "loss": progress_metrics.get("loss"),
            "images_per_s": progress_metrics.get("images_per_s"),
            "updated_at": job.progress_at,
            "time_budget_s": progress_metrics.get("time_budget_s"),
            "seconds_per_epoch": progress_metrics.get("seconds_per_epoch"),
            "expected_end_at": _expected_end(job.progress_at, progress_metrics.get("eta_s")),
            "method": progress_metrics.get("method"),
        },
        "counts": {
            "entries": job.archive_entries,
            "images": job.n_images,
            "skipped": job.n_skipped,
            "skipped_by_reason": reasons,
            "clustered": job.n_clustered,
        },
        "skipped": job.skipped[:100],
        "metrics": job.metrics or None,
        "timings": job.timings,
        "device": job.device,
        "error": job.error or None,
        "attempts": job.attempts,
        "resumed_from_epoch": job.resumed_from_epoch,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }

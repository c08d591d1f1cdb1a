"""All service settings, read once from `CORRAL_*` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.data.policy import MAX_PIXELS


class Settings(BaseSettings):
    """Service configuration; the same names in every runtime mode."""

    model_config = SettingsConfigDict(env_prefix="CORRAL_", extra="ignore")

    data_dir: Path = Path("./corral-data")  # uploads, images, checkpoints, embedded db and broker
    # Empty = SQLite file `<data_dir>/corral.db` (embedded default).
    database_url: str = ""
    # `filesystem://` = kombu's filesystem transport under `<data_dir>/broker` (embedded default).
    broker_url: str = "filesystem://"
    # How long opening a Postgres connection may take (libpq's connect_timeout; its minimum is 2)
    # unless the URL sets its own. A worker forks no job child while its reaper is in a pass, so
    # an unreachable server must fail a pass in seconds, not after the system's TCP timeout.
    database_connect_timeout_s: Annotated[int, Field(ge=2)] = 10
    # Pooled connections per process. The API lets at most this many requests hold a session at
    # once (api/seats.py), so they never open an overflow connection: one opened and closed per
    # request under load costs Postgres a backend fork each time. The overflow serves what runs
    # outside a request's session (streamed exports, an upload's commit, /ready). Two API
    # processes and the workers stay well inside Postgres's default max_connections of 100.
    database_pool_size: Annotated[int, Field(ge=1)] = 20
    database_max_overflow: Annotated[int, Field(ge=0)] = 10
    # How long a request waits for a connection before it is answered 503 with Retry-After:
    # a saturated service says so at once instead of queueing every client for SQLAlchemy's 30 s.
    database_wait_s: Annotated[float, Field(gt=0)] = 2.0
    queue_name: str = "corral"
    recluster_queue_name: str = "corral-recluster"  # re-clusterings: seconds each, never behind training

    # Upload intake (see api/intake.py).
    max_upload_bytes: Annotated[int, Field(ge=1)] = 2 * 1024**3
    max_entries: Annotated[int, Field(ge=1)] = 100_000
    max_member_bytes: Annotated[int, Field(ge=1)] = 64 * 1024**2
    max_total_bytes: Annotated[int, Field(ge=1)] = 8 * 1024**3
    max_ratio: Annotated[float, Field(gt=1)] = 200.0
    max_pixels: Annotated[int, Field(ge=1)] = MAX_PIXELS
    # At API start, a job folder this old without a job row is a cut-off upload and is removed.
    # Longer than any upload in flight on another API process sharing the data dir.
    orphan_grace_s: Annotated[float, Field(ge=0)] = 3600.0

    # Worker behaviour.
    device: str = "auto"  # auto | cpu | cuda
    # The worker writes heartbeat + progress once per interval, and so notices cancellation.
    progress_interval_s: Annotated[float, Field(gt=0)] = 2.0
    # A running job whose worker has been silent this long is lost (the reaper acts on it).
    stale_after_s: Annotated[float, Field(gt=0)] = 120.0
    reaper_interval_s: Annotated[float, Field(gt=0)] = 60.0
    max_attempts: Annotated[int, Field(ge=1)] = 3
    # A job queued this long whose run message is in no broker queue was lost (a broker
    # restarted without persistence, a worker killed between taking and claiming it): the
    # reaper sends it again. A duplicate is harmless: the claim is a compare-and-set.
    resend_queued_after_s: Annotated[float, Field(gt=0)] = 300.0
    task_time_limit_s: Annotated[int, Field(ge=10)] = 24 * 3600

    # POST /jobs/{id}/predict: images per request, seconds per request, child processes at once.
    predict_max_images: Annotated[int, Field(ge=1)] = 256
    predict_timeout_s: Annotated[float, Field(gt=0)] = 120.0
    predict_concurrency: Annotated[int, Field(ge=1)] = 2

    # Access.
    require_api_keys: bool = False  # refuse every request (but /health) until a key exists
    max_active_jobs_per_key: Annotated[int, Field(ge=1)] = 10  # queued + running; more answers 429

    log_level: str = "INFO"

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        # Absolute, so the API and a worker started from another cwd agree on every path.
        self.data_dir = self.data_dir.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'corral.db'}"
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def is_filesystem_broker(self) -> bool:
        return self.broker_url.startswith("filesystem")

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

    @property
    def visibility_timeout_s(self) -> int:
        # Longer than the task time limit, or Redis redelivers a job that is still running.
        return self.task_time_limit_s + 3600


@lru_cache
def get_settings() -> Settings:
    return Settings()

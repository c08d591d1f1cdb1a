"""Bounded schemathesis runs against the app's own OpenAPI schema (in-process, SQLite).

Stateless: every operation gets `EXAMPLES` generated requests; none may answer 5xx, and every
answer must match the schema: a documented status, its content type, its body schema.

Stateful: scenarios that upload a real archive, follow the OpenAPI links from the new job's id
to every operation that takes one, and run every schemathesis check on each answer.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.main import create_app
from store import blobs, jobs
from store.settings import Settings
from tests.api.uploads import FINISHED, valid_uploads
from worker.run import execute_job

EXAMPLES = 25  # per operation; the whole run stays well under a minute on a loaded machine
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
CONFIG_FILE = Path(__file__).parents[2] / "schemathesis.toml"
SCENARIOS, STEPS = 80, 10  # bounded: 8-22 s on two loaded cores; every job operation reached
SEED = 15  # schemathesis' own; Hypothesis' draws are derandomized


@pytest.fixture
def fuzz_app(sqlite_template: Path, tmp_path: Path) -> FastAPI:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shutil.copy(sqlite_template, data_dir / "corral.db")
    return create_app(Settings(data_dir=data_dir, broker_url="filesystem://"))


@pytest.fixture
def api_schema(fuzz_app: FastAPI):  # type: ignore[no-untyped-def]
    config = SchemathesisConfig.from_path(CONFIG_FILE)
    config.update(seed=SEED, max_failures=None)  # schemathesis' own choices (rule order) repeat too
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app, config=config)


def fuzz_one(operation):  # type: ignore[no-untyped-def]
    """A Hypothesis test of one operation: `EXAMPLES` generated requests, every check on each."""

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,  # the same requests every run: a failure here is reproducible
        database=None,
    )
    def fuzz(case) -> None:  # type: ignore[no-untyped-def]
        response = case.call_and_validate(checks=CHECKS)
        assert response.status_code < 500, (operation.label, response.text)

    return fuzz


# Driven by hand: schemathesis' pytest plugin does not load under pytest 9 yet.
def test_every_operation_answers_within_its_schema_and_never_5xx(api_schema) -> None:  # type: ignore[no-untyped-def]
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:
        fuzz_one(operation)()


def reached_with_a_real_id(label: str, status: int, body: Any) -> bool:
    """An answer about an existing job: anything but its 404 job_not_found."""
    unknown = status == 404 and isinstance(body, dict) and body.get("type", "").endswith("/job_not_found")
    return "{job_id}" in label and not unknown


class Service:
    """The app under test, as the state machine drives it: the worker's part, and a reset.

    The same draws must meet the same answers in every scenario (Hypothesis replays prefixes),
    so no state outlives a scenario.
    """

    def __init__(self, app: FastAPI) -> None:
        self.app, self.settings = app, app.state.settings

    def run_job(self, job_id: uuid.UUID) -> None:
        """What a worker does with a queued job, in this process; the model is not kept.

        A prediction child loads torch (~5 s a call), so predict here answers 404 model_not_found,
        as for a job from before models were kept; tests/api/test_predict_api.py covers its 200.
        """
        assert execute_job(job_id, settings=self.settings, sessions=self.app.state.sessions) == "succeeded"
        blobs.model_path(self.settings, job_id).unlink()

    def reset(self) -> None:
        """No jobs, no files: each scenario starts from an empty service."""
        with self.app.state.sessions() as session:
            for job in jobs.list_jobs(session, limit=10_000, before=None, owner_id=None):
                if job.source_job_id is None:  # a re-clustering goes with its source
                    deleted = jobs.delete_job(session, job=job)
                    assert deleted
                    for job_id in deleted:
                        blobs.delete_job_files(self.settings, job_id)
            session.commit()


def test_stateful_run_follows_links_from_an_upload_to_every_job_operation(api_schema, fuzz_app: FastAPI) -> None:  # type: ignore[no-untyped-def]
    service = Service(fuzz_app)
    # Positive data only: bounded, and every upload then carries a real archive.
    api_schema.config.generation.update(modes=[GenerationMode.POSITIVE])

    api_schema.hook("flatmap_body").apply_to(method="POST", path="/jobs")(valid_uploads)

    answers: dict[str, set[str]] = defaultdict(set)
    with_real_id: set[str] = set()

    class Scenario(api_schema.as_state_machine()):  # type: ignore[misc]
        def after_call(self, response, case) -> None:  # type: ignore[no-untyped-def]
            label, status = case.operation.label, response.status_code
            media_type = response.headers.get("content-type", [""])[0].split(";")[0]
            body = response.json() if media_type in ("application/json", "application/problem+json") else None
            answers[label].add(f"{status} {body.get('type', '').rsplit('/')[-1] if isinstance(body, dict) else ''}")
            if reached_with_a_real_id(label, status, body):
                with_real_id.add(label)
            if label == "POST /jobs" and status == 202 and case.body["params"]["name"] == FINISHED:
                service.run_job(uuid.UUID(body["id"]))

        def teardown(self) -> None:
            service.reset()

    started = time.monotonic()
    Scenario.run(
        settings=settings(
            max_examples=SCENARIOS,
            stateful_step_count=STEPS,
            deadline=None,
            derandomize=True,  # the same scenarios every run
            database=None,
            phases=[Phase.generate],  # a failure reports its calls as curl commands; no shrinking
            suppress_health_check=list(HealthCheck),
        )
    )
    elapsed = time.monotonic() - started
    job_operations = {
        result.ok().label for result in api_schema.get_all_operations() if "{job_id}" in result.ok().path
    }
    print(f"stateful: {elapsed:.1f} s; answers {dict(answers)}; real ids reached {sorted(with_real_id)}")
    assert "202 " in answers["POST /jobs"]
    assert with_real_id == job_operations, f"never reached with a real id: {sorted(job_operations - with_real_id)}"

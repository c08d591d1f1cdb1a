"""A bounded schemathesis run against the app's own OpenAPI schema (in-process, SQLite).

Every operation gets `EXAMPLES` generated requests; none may answer 5xx, and every answer must
match the schema: a documented status, its content type, its body schema.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.main import create_app
from store.settings import Settings

EXAMPLES = 25  # per operation; the whole run stays well under a minute on a loaded machine
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def api_schema(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    data_dir = tmp_path_factory.mktemp("fuzz")
    shutil.copy(sqlite_template, data_dir / "corral.db")
    app = create_app(Settings(data_dir=data_dir, broker_url="filesystem://"))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


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

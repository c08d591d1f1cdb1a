"""Valid POST /jobs bodies for schemathesis: JSON Schema cannot describe a readable archive.

Shared by tests/api/test_schema_fuzz.py and tests/api/schemathesis_hooks.py (the CLI's hooks).
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from pydantic import ValidationError

from api.schemas import JobParams
from tests.conftest import make_zip

FINISHED = "run by the test"  # the name of an upload the in-process test runs to its end at once


def job_bodies() -> st.SearchStrategy[dict[str, Any]]:
    """Bodies the API accepts: 3-9 tiny images in three colour folders, and k-means params (k
    given, or chosen by the job).

    Three in four are named `FINISHED`: the stateful test runs those, so their results exist.
    """
    return st.builds(
        lambda per_class, seed, k, finished: {
            "archive": make_zip(per_class=per_class, seed=seed, size=8),
            "params": {"k": k, "method": "kmeans", "name": FINISHED if finished else None},
        },
        per_class=st.integers(1, 3),
        seed=st.integers(0, 2),
        k=st.sampled_from([2, 3, "auto"]),
        finished=st.sampled_from([True, True, True, False]),
    )


def valid_uploads(context: Any, body: Any) -> st.SearchStrategy[Any]:
    """A `flatmap_body` hook for POST /jobs: a schema-valid body gets a real archive instead.

    Body hooks run before schemathesis labels a case positive or negative, so a negative body
    (params that break the schema, no archive) is left as generated, to be refused.
    """
    if not (isinstance(body, dict) and "archive" in body and _schema_valid(body.get("params"))):
        return st.just(body)
    return job_bodies()


def _schema_valid(params: Any) -> bool:
    try:
        JobParams.model_validate(params)
    except ValidationError:
        return False
    return True

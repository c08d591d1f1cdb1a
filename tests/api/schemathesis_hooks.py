"""Hooks for the schemathesis CLI, so its stateful phase can create jobs and follow their links:

    corral serve &   # the API and a worker, so uploaded jobs finish
    SCHEMATHESIS_HOOKS=tests.api.schemathesis_hooks schemathesis run --checks all \
        http://127.0.0.1:8000/openapi.json
"""

from __future__ import annotations

import schemathesis

from tests.api.uploads import valid_uploads

schemathesis.hook("flatmap_body").apply_to(method="POST", path="/jobs")(valid_uploads)

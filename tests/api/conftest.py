import uuid
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker

from store.settings import Settings
from tests.conftest import COLOURS, make_zip, png_bytes
from worker.run import execute_job

# Names a page or a zip must escape: markup, quotes, spaces, non-ASCII.
HOSTILE = ("red/<b>bold</b> & 'q'.png", 'red/"quote" ünï.png')


@pytest.fixture
def succeeded_job(submit: Callable[..., httpx.Response], settings: Settings,
                  sessions: sessionmaker[Session]) -> dict:  # type: ignore[type-arg]
    """A k-means job on three colour folders (6 + 8 + 6 images), run to its end in this process."""
    rng = np.random.default_rng(2)
    extra = {name: png_bytes(COLOURS["red"], rng) for name in HOSTILE}
    response = submit(make_zip(per_class=6, extra=extra), {"k": 3, "method": "kmeans", "name": "<i>colours</i>"})
    assert response.status_code == 202, response.text
    job_id = uuid.UUID(response.json()["id"])
    assert execute_job(job_id, settings=settings, sessions=sessions) == "succeeded"
    return response.json()  # type: ignore[no-any-return]

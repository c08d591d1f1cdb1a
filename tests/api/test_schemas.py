import pytest
from pydantic import ValidationError

from api.schemas import JobParams
from core.config import BOUNDS, ClusterConfig
from core.errors import InvalidInput


@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_job_params_and_core_refuse_the_same_values(name: str) -> None:
    """The bounds live in core.config.BOUNDS only: a request and a library call agree at both ends."""
    low, high = BOUNDS[name]
    base = {"method": "kmeans"} if name == "k_max" else {"k": 2, "method": "kmeans"}  # k_max: k chosen
    for accepted in (low, high):
        params = JobParams.model_validate({**base, name: accepted})
        ClusterConfig(**params.cluster_config()).validate()
    for refused in (low - 1, high + 1):
        with pytest.raises(ValidationError):
            JobParams.model_validate({**base, name: refused})
        with pytest.raises(InvalidInput, match=f"{name}={refused}"):
            ClusterConfig(**{**base, name: refused}).validate()  # type: ignore[arg-type]

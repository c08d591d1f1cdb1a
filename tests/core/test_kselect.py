import json

import numpy as np
import pytest

from core.kselect import choose_k
from tests.core.test_recluster import blobs


@pytest.mark.parametrize("k", [3, 7])
def test_choose_k_finds_the_number_of_separated_clusters(k: int) -> None:
    x, _ = blobs(k=k, per=40, d=32, seed=k)
    choice = choose_k(x, 15)
    assert choice.k == k
    assert choice.k_max == 15 and [pair[0] for pair in choice.scores] == list(range(2, 16))
    assert choice.criterion == "silhouette"


def test_choice_is_json_safe_and_k_max_capped_by_the_points() -> None:
    x, _ = blobs(k=2, per=3, d=8)
    choice = choose_k(x, 50)
    assert choice.k_max == 5  # 6 points: at most 5 clusters can be scored
    data = json.loads(json.dumps(choice.to_dict(), allow_nan=False))
    assert set(data) == {"k", "criterion", "k_max", "scores", "note"} and data["k"] == choice.k
    assert data["note"] is None  # the k-means path takes the highest score
    assert [s["k"] for s in data["scores"]] == [2, 3, 4, 5]


def test_choose_k_refuses_too_few_points() -> None:
    with pytest.raises(ValueError, match="at least 3 images"):
        choose_k(np.ones((2, 4), np.float32), 10)

"""Choosing k for IMC-SwAV by classifier heads fitted to its prototype distributions."""

import itertools
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from core.errors import InvalidInput
from core.kheads import DENSE_UP_TO, HeadReadout, candidates, choose_k_by_heads
from tests.core.test_recluster import blobs


def prototype_codes(x: np.ndarray, prototypes: int = 60, temperature: float = 0.1, seed: int = 0) -> torch.Tensor:
    """Soft assignments of unit features to random points of the set, as IMC's prototypes see them."""
    unit = torch.nn.functional.normalize(torch.as_tensor(x).float(), dim=1)
    chosen = unit[torch.randperm(len(unit), generator=torch.Generator().manual_seed(seed))[:prototypes]]
    return torch.softmax(unit @ chosen.T / temperature, dim=1)


def test_candidates_are_every_small_k_then_a_grid_up_to_k_max() -> None:
    assert candidates(6) == [2, 3, 4, 5, 6]
    wide = candidates(50)
    assert wide[: DENSE_UP_TO - 1] == list(range(2, DENSE_UP_TO + 1)) and wide[-1] == 50
    assert all(a < b for a, b in itertools.pairwise(wide))
    assert candidates(1000)[-1] == 1000 and len(candidates(1000)) < 60  # each head costs k columns


@pytest.mark.parametrize("k", [4, 7])
def test_heads_find_the_number_of_separated_clusters_and_label_them(k: int) -> None:
    x, truth = blobs(k=k, per=40, d=32, seed=k)
    chosen = choose_k_by_heads(x, prototype_codes(x), 12, beta=4.0, seed=0)
    assert chosen.choice.k == k and chosen.choice.k_max == 12
    assert [pair[0] for pair in chosen.choice.scores] == list(range(2, 13))
    assert adjusted_rand_score(truth, chosen.labels) == 1.0
    assert chosen.centres.shape == (k, 32) and chosen.confidences.shape == (len(x),)
    with torch.no_grad():  # the head alone labels the same features
        labels, confidences = chosen.head(torch.as_tensor(x))
    assert np.array_equal(labels.numpy(), chosen.labels)
    np.testing.assert_allclose(confidences.numpy(), chosen.confidences, atol=1e-6)
    json.dumps(chosen.choice.to_dict(), allow_nan=False)  # -inf scores are stored as null


def test_the_choice_is_the_same_for_the_same_seed() -> None:
    x, _ = blobs(k=5, per=30, d=16, seed=1)
    codes = prototype_codes(x)
    first, again = (choose_k_by_heads(x, codes, 10, beta=4.0, seed=3) for _ in range(2))
    assert first.choice == again.choice and np.array_equal(first.labels, again.labels)


def test_head_readout_applies_the_head_to_the_base_embedding() -> None:
    x, _ = blobs(k=3, per=20, d=8, seed=2)
    chosen = choose_k_by_heads(x, prototype_codes(x, prototypes=20), 6, beta=4.0)

    class Identity(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))  # a state entry: the device is read from it

        def embed(self, images: torch.Tensor) -> torch.Tensor:
            return images.float()

    with torch.no_grad():
        labels, _ = HeadReadout(Identity(), chosen.head)(torch.as_tensor(x))
    assert np.array_equal(labels.numpy(), chosen.labels)


def test_too_few_images_or_mismatched_codes_are_refused() -> None:
    with pytest.raises(InvalidInput, match="N >= 3"):
        choose_k_by_heads(np.ones((2, 4), np.float32), torch.ones(2, 5) / 5, 10, beta=4.0)
    with pytest.raises(InvalidInput, match="codes"):
        choose_k_by_heads(np.ones((6, 4), np.float32), torch.ones(5, 5) / 5, 10, beta=4.0)

"""Small synthetic image sets whose classes survive crops, flips, jitter and small rotations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

# One thread: the suite shares two cores with a worker process, and OpenMP spin-waiting under
# contention makes two threads several times slower than one.
torch.set_num_threads(1)


def striped_images(per_class: int = 30, size: int = 32, colour: bool = False, seed: int = 0):
    """Three classes: horizontal stripes, vertical stripes, a disc; uniform noise on top."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    centre, radius2 = size // 2, (size * 0.3) ** 2
    patterns = [((yy // 4) % 2) * 255, ((xx // 4) % 2) * 255,
                (((xx - centre) ** 2 + (yy - centre) ** 2) < radius2) * 255]
    images, labels = [], []
    for label, pattern in enumerate(patterns):
        for _ in range(per_class):
            grey = np.clip(pattern * 0.8 + rng.random((size, size)) * 50, 0, 255)
            images.append(np.stack([grey] * 3) if colour else grey[None])
            labels.append(label)
    return torch.from_numpy(np.stack(images).astype(np.uint8)), np.array(labels)


@pytest.fixture
def images() -> tuple[torch.Tensor, np.ndarray]:
    """90 grey 32-px images in 3 classes, and their labels."""
    return striped_images()


@pytest.fixture
def colour_images() -> tuple[torch.Tensor, np.ndarray]:
    """60 RGB 16-px images in 3 classes, and their labels."""
    return striped_images(per_class=20, size=16, colour=True)

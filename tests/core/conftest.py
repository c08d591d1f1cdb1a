"""Small synthetic image sets whose classes survive crops, flips, jitter and small rotations, and
the pieces of an MMDC or IMC run as its train() sets them up, for tests of single epochs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.config import ClusterConfig
from core.context import RunContext
from core.methods import imc, imc_plan, mmdc, mmdc_plan

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


def cpu_context(seed: int = 0) -> RunContext:
    return RunContext(device=torch.device("cpu"), generator=torch.Generator().manual_seed(seed))


MMDCParts = tuple[mmdc_plan.Plan, mmdc.MMDCState, mmdc.Steps, RunContext]


def mmdc_parts(images: torch.Tensor, config: ClusterConfig) -> MMDCParts:
    """What train_mmdc sets up before its loop: plan, fresh state, (graphed) steps and a CPU context."""
    ctx = cpu_context()
    plan = mmdc_plan.make_plan(config, images.shape[0], images.shape[1], images.shape[-1])
    state = mmdc.initial_state(images, config, plan, ctx)
    return plan, state, mmdc.graphed_steps(state, ctx.device, config.precision), ctx


class IMCRun:
    """What train_imc sets up before its loop, and one epoch of it."""

    def __init__(self, images: np.ndarray | torch.Tensor, config: ClusterConfig):
        torch.manual_seed(config.seed)
        self.images, self.config, self.ctx = torch.as_tensor(images), config, cpu_context(config.seed)
        self.plan = imc_plan.make_plan(config, self.images.shape[0], self.images.shape[1], self.images.shape[-1])
        self.state = imc.initial_state(self.images, config, self.plan, self.ctx)
        self.step = imc.graphed_step(self.state, self.plan, config, self.ctx.device)
        self.views = imc.Views(self.plan, config.imc, *imc.channel_stats(self.images), self.ctx.generator)

    def train_epoch(self) -> dict[str, float]:
        return imc.train_epoch(self.images, self.state, self.step, self.views, self.plan, self.config.imc, self.ctx)

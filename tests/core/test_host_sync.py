"""The training loops let the host run ahead of a GPU (issue 7: no host sync per step except
what the Hungarian needs).

On the CPU nothing can be timed, but the operations that would stall a CUDA host are visible
as they dispatch: reading a value back (`item`, `bool(tensor)`), data-dependent shapes
(`nonzero`, boolean-mask indexing), tensors built from host data (on CUDA a copy from pageable
memory, which first drains the GPU's queue) and linalg calls that check their errors. Counting
them over epochs of two lengths shows whether any of them happens per step.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from core.config import ClusterConfig
from core.data import augment
from core.methods import mmdc
from tests.core.conftest import IMCRun, mmdc_parts, striped_images

STALLING = {"aten._local_scalar_dense", "aten.lift_fresh", "aten._linalg_check_errors", "aten.nonzero",
            "aten.masked_select", "aten.unique_dim", "aten._unique2", "aten.item"}


class StallRecorder(TorchDispatchMode):
    """Counts the dispatched operations that would stall a CUDA host. Reading an optimiser's
    step counter is exempt: unless the optimiser is capturable (as it is under CUDA graphs), that
    counter lives in host memory on every device."""

    def __init__(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        super().__init__()
        self.optimizer = optimizer
        self.counts: Counter[str] = Counter()

    def is_step_counter(self, tensor: object) -> bool:
        states = self.optimizer.state.values() if self.optimizer is not None else ()
        return any(state.get("step") is tensor for state in states)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = func.overloadpacket._qualified_op_name.replace("::", ".")
        if name == "aten._local_scalar_dense" and self.is_step_counter(args[0]):
            pass
        elif name in STALLING:
            self.counts[name] += 1
        elif name == "aten.index" and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                                          for i in args[1]):
            self.counts["boolean-mask indexing"] += 1
        return func(*args, **(kwargs or {}))


def stalls(run: Callable[[], object], optimizer: torch.optim.Optimizer | None = None) -> Counter[str]:
    with StallRecorder(optimizer) as recorder:
        run()
    return recorder.counts


def colour(n_per_class: int) -> torch.Tensor:
    return striped_images(per_class=n_per_class, size=16, colour=True)[0]


def test_the_augmentations_never_stall_the_host():
    raw, g = colour(4), torch.Generator().manual_seed(0)
    x = augment.to_unit(raw)

    def every_augmentation() -> object:
        return (augment.random_crops(raw, 16, g, crop_fractions=(0.75, 0.5), flip=True, max_degrees=25),
                augment.random_grayscale(augment.color_jitter(x, g), g, p=0.2),
                augment.random_resized_crops(raw.repeat(2, 1, 1, 1), 12, g, scale=(0.2, 1.0)),
                augment.rotations(raw), augment.centre_crops(raw, 16, 0.75))

    every_augmentation()  # the first call puts the constant tables (crop sizes, YIQ) on the device
    assert stalls(every_augmentation) == Counter()


def mmdc_epochs(n_per_class: int) -> tuple[int, Counter[str], Counter[str], Counter[str]]:
    torch.manual_seed(0)
    config = ClusterConfig(k=3, method="mmdc", backbone="resnet18", batch_size=6, epochs=2)
    images = colour(n_per_class)
    plan, state, steps, ctx = mmdc_parts(images, config)
    count = len(mmdc.shuffled_batches(images.shape[0], plan.batch_size, ctx.generator))

    def clustering(reassign: bool) -> Callable[[], object]:
        return lambda: mmdc.clustering_epoch(images, state, steps, plan, ctx, reassign=reassign)

    return (count, stalls(lambda: mmdc.rotation_epoch(images, state, steps, plan, ctx)),
            stalls(clustering(reassign=False)), stalls(clustering(reassign=True)))


def test_mmdc_epochs_stall_once_per_epoch_and_upload_only_the_assignment_per_step():
    short_steps, *short = mmdc_epochs(n_per_class=4)  # 2 steps
    long_steps, *long = mmdc_epochs(n_per_class=10)  # 5 steps
    rotation, fixed, reassigned = (b - a for a, b in zip(short, long, strict=True))
    assert short[0]["aten._local_scalar_dense"] >= 1  # the recorder sees the epoch's one check
    assert rotation == Counter() and fixed == Counter()
    # the Hungarian's permutation is the one thing per step that comes from the host
    assert reassigned == Counter({"aten.lift_fresh": long_steps - short_steps})


def test_an_imc_epoch_stalls_the_host_a_fixed_number_of_times_whatever_its_length():
    def epoch(n_per_class: int) -> Counter[str]:
        torch.manual_seed(0)
        config = ClusterConfig(k=3, method="imc", batch_size=6, epochs=2)
        run = IMCRun(colour(n_per_class), config)
        return stalls(run.train_epoch, run.state.optimizer)

    short, long = epoch(n_per_class=4), epoch(n_per_class=10)  # 2 and 5 steps
    assert short["aten._local_scalar_dense"] >= 1
    assert long == short

"""CUDA graphs against eager steps: same trajectory, and how much faster (issue 7).

    python -m bench.graph_check --out /tmp/res/graph-check.json     # needs a CUDA device

Each method trains twice from one seed on the same synthetic images, once eagerly
(CORRAL_CUDA_GRAPHS=0) and once with its steps replayed as graphs, in fp32 with deterministic
cuDNN, without the Hungarian (its ties can flip on the last bit and part the runs), with the
same optimiser settings (IMC-SwAV's Adam is capturable in both). It reports
the largest relative difference of any parameter tensor and the loss curves (close to 0: the
graphs compute the same steps), then times one epoch of each method both ways in the run's
default precision, Hungarian included.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from core.config import ClusterConfig
from core.context import RunContext
from core.graphs import GraphedStep
from core.methods import imc, imc_plan, mmdc, mmdc_plan
from core.runtime import configure_backend


@dataclass
class Run:
    """A fresh run from seed 0: its model, one epoch of it (reassign: with the Hungarian) and its steps."""

    model: torch.nn.Module
    epoch: Callable[[bool], float]
    steps: list[GraphedStep]


def seeded(method: str, images: torch.Tensor, precision: str, graphs: bool) -> tuple[RunContext, ClusterConfig]:
    os.environ["CORRAL_CUDA_GRAPHS"] = "1" if graphs else "0"
    torch.manual_seed(0)
    ctx = RunContext(device=images.device, generator=torch.Generator(device=images.device).manual_seed(0))
    return ctx, ClusterConfig(k=10, method=method, epochs=10, precision=precision)  # type: ignore[arg-type]


def mmdc_run(images: torch.Tensor, precision: str, graphs: bool) -> Run:
    ctx, config = seeded("mmdc", images, precision, graphs)
    plan = mmdc_plan.make_plan(config, images.shape[0], images.shape[1], images.shape[-1])
    state = mmdc.initial_state(images, config, plan, ctx)
    steps = mmdc.graphed_steps(state, ctx.device, config.precision)

    def epoch(reassign: bool) -> float:
        return (mmdc.rotation_epoch(images, state, steps, plan, ctx)
                + mmdc.clustering_epoch(images, state, steps, plan, ctx, reassign=reassign)[0])
    return Run(state.model, epoch, [steps.regress, steps.rotate, steps.cost])


def imc_run(images: torch.Tensor, precision: str, graphs: bool) -> Run:
    ctx, config = seeded("imc", images, precision, graphs)
    plan = imc_plan.make_plan(config, images.shape[0], images.shape[1], images.shape[-1])
    state = imc.initial_state(images, config, plan, ctx)
    step = imc.graphed_step(state, plan, config, ctx.device)
    for group in state.optimizer.param_groups:  # the graphed run's Adam (its step count on the device),
        group["capturable"] = True  # so the two runs differ in the graphs alone
    views = imc.Views(plan, config.imc, *imc.channel_stats(images), ctx.generator)

    def epoch(reassign: bool) -> float:  # IMC has no Hungarian
        state.epoch += 1
        return imc.train_epoch(images, state, step, views, plan, config.imc, ctx)["loss"]
    return Run(state.model, epoch, [step])


RUNS = {"mmdc": mmdc_run, "imc": imc_run}


def difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(float((x - y).norm() / y.norm().clamp_min(1e-12))
               for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True) if x.is_floating_point())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device("cuda")
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, device=device)
    report: dict[str, object] = {"device_name": torch.cuda.get_device_name(), "images": args.images}
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    for method in ("mmdc", "imc"):
        runs = [RUNS[method](images, "fp32", graphs) for graphs in (False, True)]
        curves = [[run.epoch(False) for _ in range(args.epochs)] for run in runs]
        captures = sum(step.captures for step in runs[1].steps)
        report[f"{method}_same_steps"] = {"max_relative_parameter_difference": difference(runs[1].model,
                                                                                          runs[0].model),
                                          "eager_losses": curves[0], "graphed_losses": curves[1],
                                          "graphs_captured": captures}
    configure_backend(device)
    torch.backends.cudnn.deterministic = False
    for method in ("mmdc", "imc"):
        for graphs in (False, True):
            run = RUNS[method](images, "auto", graphs)
            run.epoch(True)  # warm-up: cuDNN autotuning, captures
            torch.cuda.synchronize()
            started = time.perf_counter()
            run.epoch(True)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            report[f"{method}_epoch_seconds_{'graphed' if graphs else 'eager'}"] = seconds
        report[f"{method}_speedup"] = (report[f"{method}_epoch_seconds_eager"]  # type: ignore[operator]
                                       / report[f"{method}_epoch_seconds_graphed"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()

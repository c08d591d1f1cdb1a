"""Training steps replayed as CUDA graphs.

On an H100 our steps are bound by the host's kernel launches, not by arithmetic: a ResNet-18
forward+backward+SGD step took 13-14 ms at batch 128 and at batch 512 alike (bench/RESULTS.md,
GPU), and torch.compile did not change that. A CUDA graph launches a whole recorded step at once.

`GraphedStep(fn)` wraps a function of tensors (forward, loss, backward, optimiser step; or a
no-grad forward) and returns what it returns. On CUDA, once the same input shapes, learning
rates and `key()` have been seen `warmup` times in a row (eagerly, on a side stream, as
torch.cuda.graphs asks: momentum buffers, cuDNN's autotuning and other lazy state come into
being there), the function is captured once and replayed from then on. Anything the step reads
from Python is baked into the graph, so `key()` must name what else changes (whether a layer is
frozen, say): a new signature runs eagerly until it is steady, then captures its own graph.
Everywhere else (CPU, CORRAL_CUDA_GRAPHS=0) it is a plain call; the results do not depend on
whether graphs are used beyond floating-point noise (bench/graph_check.py measures that).

Outputs of a replay are static buffers that the next replay overwrites: use or copy them first.
Random draws must stay outside (the augmentations run eagerly and pass their output in).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, cast

import torch

log = logging.getLogger(__name__)


def graphs_enabled(device: torch.device) -> bool:
    return device.type == "cuda" and os.environ.get("CORRAL_CUDA_GRAPHS", "1").strip() != "0"


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, ...]  # static: each call copies its tensors in
    outputs: Any  # static: each replay overwrites them
    grads: list[torch.Tensor]  # the gradients the backward inside writes: their memory stays the graph's


class GraphedStep:
    MAX_GRAPHS = 4  # e.g. the full batch and an epoch's short last one; older ones are dropped

    def __init__(
        self,
        fn: Callable[..., Any],
        device: torch.device,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        key: Callable[[], Hashable] = lambda: None,
        warmup: int = 3,
    ):
        """fn(*tensors) -> tensor(s). optimizer: the one fn steps, if any; its learning rates
        join the key, since a captured step repeats the rates it was recorded with."""
        self.fn, self.device, self.optimizer, self.key, self.warmup = fn, device, optimizer, key, warmup
        self.enabled = graphs_enabled(device)
        self.graphs: OrderedDict[Hashable, _Captured] = OrderedDict()
        self.streak, self.last = 0, cast(Hashable, None)
        self.captures = 0

    def __call__(self, *inputs: torch.Tensor) -> Any:
        if not self.enabled:
            return self.fn(*inputs)
        rates = tuple(group["lr"] for group in self.optimizer.param_groups) if self.optimizer else ()
        signature = (tuple((tuple(x.shape), x.dtype, x.stride()) for x in inputs), rates, self.key())
        self.streak = self.streak + 1 if signature == self.last else 1
        self.last = signature
        captured = self.graphs.get(signature)
        if captured is None:
            if self.streak <= self.warmup:
                return self._on_side_stream(inputs)
            try:
                captured = self._capture(inputs, signature)
            except RuntimeError as error:  # an op that cannot be captured: slower, still right
                fn = getattr(self.fn, "func", self.fn)  # the function a functools.partial binds
                log.warning("CUDA graph capture failed, %s runs eagerly from now on: %s",
                            getattr(fn, "__name__", "the step"), error)
                self.enabled = False
                self.graphs.clear()
                return self.fn(*inputs)
        for static, x in zip(captured.inputs, inputs, strict=True):
            static.copy_(x)
        captured.graph.replay()
        return captured.outputs

    def _on_side_stream(self, inputs: tuple[torch.Tensor, ...]) -> Any:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            outputs = self.fn(*inputs)
        torch.cuda.current_stream(self.device).wait_stream(side)
        return outputs

    def _capture(self, inputs: tuple[torch.Tensor, ...], signature: Hashable) -> _Captured:
        if len(self.graphs) >= self.MAX_GRAPHS:
            self.graphs.popitem(last=False)
        static = tuple(x.clone() for x in inputs)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = self.fn(*static)  # gradients fn sets to None first are allocated from the
            # graph's memory by its backward; ones it zeroes in place keep their own
        params = [p for g in self.optimizer.param_groups for p in g["params"]] if self.optimizer else []
        captured = _Captured(graph, static, outputs, [p.grad for p in params if p.grad is not None])
        self.graphs[signature] = captured
        self.captures += 1
        return captured

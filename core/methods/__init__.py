"""Method name -> training function; each takes (images, config, ctx) and returns MethodOutput."""

from collections.abc import Callable

import torch

from core.config import ClusterConfig
from core.context import MethodOutput, RunContext
from core.methods.imc import train_imc
from core.methods.kmeans import run_kmeans
from core.methods.mmdc import train_mmdc

Method = Callable[[torch.Tensor, ClusterConfig, RunContext], MethodOutput]

METHODS: dict[str, Method] = {"mmdc": train_mmdc, "imc": train_imc, "kmeans": run_kmeans}

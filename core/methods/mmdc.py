"""MMDC — Multi-Modal Deep Clustering (Shiran & Weinshall, ICPR 2020, arXiv 1912.02678).

Unit-norm embeddings regress onto targets sampled once from a k-component mixture on the
sphere (σ = 0: the one-hot means). Each batch first re-permutes its own targets among its
images with the Hungarian algorithm (cost ‖z_i − t_j‖, §1.5), then takes an SGD step on the MSE
(§1.4). ResNet runs alternate a full rotation-prediction epoch with each clustering epoch
(§1.6). From the refinement epoch on, k-means on all embeddings gives fixed one-hot targets whose
ids are aligned with the previous ones (§1.8). Cluster = nearest mixture mean (§1.9).
Section numbers refer to docs/algorithms.md.

`train_mmdc` at the end is the whole run in order: set-up, resume, then per epoch refine /
rotate / cluster and one `end_epoch`; the functions above it are its steps, views and epochs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.assign import hungarian
from core.config import ClusterConfig, MMDCParams
from core.context import MethodOutput, RunContext
from core.data import augment
from core.graphs import GraphedStep
from core.methods.mmdc_plan import INPUT_SIZE, Plan, make_plan
from core.models.backbones import Upsampled, build_backbone
from core.models.mmdc_net import FeaturesAndEmbedding, MMDCNet  # also the path models saved before it moved pickled
from core.refine import kmeans_centres, kmeans_targets
from core.runtime import (
    HostCopy,
    autocast,
    channels_last,
    check_finite,
    compile_if_requested,
    infer,
    prepare_model,
    resolve_precision,
    sgd_param_groups,
    upload,
)
from core.training import end_epoch, resume

CONFIDENCE_TEMPERATURE = 0.1


def sample_targets(n: int, k: int, params: MMDCParams, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n targets (one per image) from the k-component mixture on the sphere, and its means (§1.3)."""
    device = g.device
    if params.means == "one_hot":
        means = torch.eye(k, device=device)
    else:
        means = F.normalize(torch.rand(k, k, generator=g, device=device) * 0.2 - 0.1, dim=1)
    components = torch.randint(k, (n,), generator=g, device=device)
    targets = means[components] + params.sigma * torch.randn(n, k, generator=g, device=device)
    return F.normalize(targets, dim=1), means


def readout(z: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre by cosine (= argmax of z for one-hot means); confidence = softmax(cos / 0.1)."""
    similarity = z @ F.normalize(centres, dim=1).T  # (N, k)
    probabilities = torch.softmax(similarity / CONFIDENCE_TEMPERATURE, dim=1)
    confidence, labels = probabilities.max(1)
    return labels, confidence


class MMDCReadout(nn.Module):
    """The trained network and final centres: uint8 images -> (labels, confidences), as `readout`
    on the centre view (§1.9)."""

    def __init__(self, net: MMDCNet, centres: torch.Tensor, size: int, crop: float):
        super().__init__()
        self.net, self.size, self.crop = net, size, crop
        self.register_buffer("centres", centres.detach().float().clone())  # (k, k)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The unit embedding (N, k) of the centre view: the run's `embeddings` for its own images."""
        return self.net(channels_last(augment.centre_crops(images, self.size, self.crop))).float()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.embed(images)  # (N, k)
        with torch.autocast(z.device.type, enabled=False):  # the run's read-out is fp32, as here
            return readout(z, self.centres)


@dataclass
class MMDCState:
    """What an MMDC run changes as it trains: all its checkpoint holds besides the generator."""

    model: MMDCNet
    optimizer: torch.optim.SGD
    scheduler: torch.optim.lr_scheduler.MultiStepLR
    targets: torch.Tensor  # (N, k): image i regresses onto targets[i]
    means: torch.Tensor  # (k, k): the mixture means the targets were drawn around
    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "targets": self.targets.cpu(), "means": self.means.cpu()}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.targets = saved["targets"].to(self.targets.device)
        self.means = saved["means"].to(self.means.device)


def initial_state(images: torch.Tensor, config: ClusterConfig, plan: Plan, ctx: RunContext) -> MMDCState:
    """A fresh network (torch's global RNG initialises it), SGD, and targets drawn from ctx.generator."""
    n, channels, size = images.shape[0], images.shape[1], images.shape[-1]
    backbone: nn.Module = build_backbone(plan.backbone, channels, max(size, INPUT_SIZE), stem_pool="mmdc")
    if size < INPUT_SIZE:
        backbone = Upsampled(backbone, INPUT_SIZE)
    model = prepare_model(MMDCNet(backbone, config.k, plan.rotation), ctx.device)
    compile_if_requested(model.backbone)
    p = config.mmdc
    optimizer = torch.optim.SGD(sgd_param_groups(model, p.weight_decay), lr=p.lr, momentum=p.momentum)
    # The reference's zero_grad() (torch 1.x) fills gradients with zeros instead of dropping
    # them, so the head a step does not use still takes its weight decay and momentum: the
    # clustering head shrinks during rotation epochs and the rotation head during clustering
    # epochs. Gradients that exist from the start and are only ever zeroed do the same here.
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[plan.decay_epoch], gamma=plan.decay_gamma)
    targets, means = sample_targets(n, config.k, p, ctx.generator)
    return MMDCState(model, optimizer, scheduler, targets, means)


# -- views -----------------------------------------------------------------------------------
def train_view(raw: torch.Tensor, plan: Plan, g: torch.Generator) -> torch.Tensor:
    """Augmented float crops (B, C, S, S) of uint8 images (§1.7), resized back to the side S."""
    x = augment.to_unit(raw)
    if plan.jitter:  # jitter and grey-scale come before the geometry, as in the reference
        x = augment.random_grayscale(augment.color_jitter(x, g), g, p=0.2)
    return augment.random_crops(x, raw.shape[-1], g, crop_fractions=plan.crops, flip=plan.flip,
                                max_degrees=plan.rotate_degrees)


def centre_view(raw: torch.Tensor, plan: Plan) -> torch.Tensor:
    """The first crop size, centred: what the Hungarian, k-means and the read-out see."""
    return augment.centre_crops(raw, raw.shape[-1], plan.crops[0])


# -- steps: tensors in, tensors out, no random draws (each may replay as a CUDA graph) ----------
def sgd_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=False)  # see initial_state: as the reference
    loss.backward()
    optimizer.step()


def regression_step(model: MMDCNet, optimizer: torch.optim.Optimizer, device: torch.device, precision: str,
                    x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    with autocast(device, precision):
        z = model(x).float()
        loss = F.mse_loss(z, targets)  # = (2 - 2 z·t) / k per image (§1.4)
    sgd_step(optimizer, loss)
    return loss.detach()


def rotation_step(model: MMDCNet, optimizer: torch.optim.Optimizer, device: torch.device, precision: str,
                  x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    with autocast(device, precision):
        loss = F.cross_entropy(model.rotation_logits(x).float(), labels)
    sgd_step(optimizer, loss)
    return loss.detach()


@torch.no_grad()
def assignment_cost(model: MMDCNet, device: torch.device, precision: str,
                    view: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, B) plain Euclidean distances from the eval-mode embeddings (as the reference) to the
    batch's targets."""
    model.eval()
    with autocast(device, precision):
        z_view = model(view)
    model.train()
    return torch.cdist(z_view.float(), targets.float())


@dataclass(frozen=True)
class Steps:
    regress: GraphedStep  # (train view, targets) -> loss, after one SGD step
    rotate: GraphedStep  # (rotated crops, rotation labels) -> loss, after one SGD step
    cost: GraphedStep  # (centre view, targets) -> (B, B) assignment cost


def graphed_steps(state: MMDCState, device: torch.device, precision: str) -> Steps:
    """On CUDA each kind of step replays as one graph once steady (core/graphs.py); elsewhere
    they are plain calls."""
    model, optimizer = state.model, state.optimizer
    return Steps(
        regress=GraphedStep(partial(regression_step, model, optimizer, device, precision), device, optimizer=optimizer),
        rotate=GraphedStep(partial(rotation_step, model, optimizer, device, precision), device, optimizer=optimizer),
        cost=GraphedStep(partial(assignment_cost, model, device, precision), device),
    )


# -- epochs ----------------------------------------------------------------------------------
def lookahead_targets(
    batches: list[torch.Tensor],
    targets: torch.Tensor,
    *,
    images: torch.Tensor,
    plan: Plan,
    cost: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> Iterator[torch.Tensor]:
    """Yield each batch's targets (B, k), permuted among its images to minimise Σ‖z_i − t_π(i)‖
    (§1.5) and written back into `targets` (N, k). cost(centre view, batch targets) gives the
    (B, B) cost matrix on the device.

    Batch t+1's cost is computed, and starts its copy to the host, before batch t's targets are
    yielded: its Hungarian is solved on the host while the device trains on batch t (design: the
    GPU never idles for the assignment). That cost therefore comes from the weights before step
    t, one SGD step older than the reference's, on CPU and GPU alike.
    """

    def start(index: torch.Tensor) -> tuple[HostCopy, torch.Tensor]:
        batch_targets = targets[index]
        return HostCopy(cost(channels_last(centre_view(images[index], plan)), batch_targets)), batch_targets

    pending = start(batches[0])
    for step, index in enumerate(batches):
        copy, batch_targets = pending
        targets[index] = batch_targets[upload(hungarian(copy.wait().numpy()), targets.device)]
        if step + 1 < len(batches):
            pending = start(batches[step + 1])
        yield targets[index]


def clustering_epoch(images: torch.Tensor, state: MMDCState, steps: Steps, plan: Plan, ctx: RunContext, *,
                     reassign: bool) -> tuple[float, float]:
    """One pass of regression onto the targets (§1.4), with `reassign` each batch's first permuted
    by the Hungarian (§1.5). Returns (mean loss, training images/s)."""
    total, seen, started = torch.zeros((), device=ctx.device), 0, time.perf_counter()
    batches = shuffled_batches(images.shape[0], plan.batch_size, ctx.generator)
    assigned = (lookahead_targets(batches, state.targets, images=images, plan=plan, cost=steps.cost) if reassign
                else (state.targets[index] for index in batches))
    for step, (index, batch_targets) in enumerate(zip(batches, assigned, strict=True)):
        loss = steps.regress(channels_last(train_view(images[index], plan, ctx.generator)), batch_targets)
        total += loss
        seen += len(index)
        if step % 50 == 0:
            ctx.report("clustering", state.epoch, plan.epochs, loss=float(loss))
    check_finite(total, "MMDC clustering", state.epoch + 1)
    return float(total) / max(len(batches), 1), seen / (time.perf_counter() - started)


def rotation_epoch(images: torch.Tensor, state: MMDCState, steps: Steps, plan: Plan, ctx: RunContext) -> float:
    """One pass of 4-way rotation prediction; the four rotations share one forward (§1.6)."""
    total = torch.zeros((), device=ctx.device)
    batches = shuffled_batches(images.shape[0], plan.batch_size, ctx.generator)
    for index in batches:
        rotated, labels = augment.rotations(images[index])  # (4B, C, S, S) uint8
        x = augment.random_crops(rotated, images.shape[-1], ctx.generator, crop_fractions=plan.crops)
        total += steps.rotate(channels_last(x), labels)
    check_finite(total, "MMDC rotation", state.epoch + 1)
    return float(total) / max(len(batches), 1)


def refine(state: MMDCState, embeddings: torch.Tensor, config: ClusterConfig, g: torch.Generator) -> dict[str, float]:
    """k-means on all embeddings -> fixed one-hot targets aligned with the previous ids (§1.8).

    Returns how much the targets moved: the share of images that kept their cluster id, and
    the smallest cluster's share of the images (nothing rebalances k-means clusters)."""
    previous = state.targets.argmax(1)
    state.targets = kmeans_targets(embeddings, previous, config.k, generator=g, restarts=config.mmdc.kmeans_restarts)
    labels = state.targets.argmax(1)
    sizes = torch.bincount(labels, minlength=config.k)
    return {"refine_kept": float((labels == previous).float().mean()),
            "refine_smallest_share": float(sizes.min()) / labels.shape[0]}


def shuffled_batches(n: int, batch_size: int, g: torch.Generator) -> list[torch.Tensor]:
    parts = list(torch.randperm(n, generator=g, device=g.device).split(batch_size))
    if len(parts) > 1 and len(parts[-1]) < 2:  # BatchNorm needs two images in train mode
        parts.pop()
    return parts


def train_mmdc(images: torch.Tensor, config: ClusterConfig, ctx: RunContext) -> MethodOutput:
    """Train MMDC on `images` (N, C, S, S) uint8 on ctx.device; resume from ctx.checkpoint."""
    plan = make_plan(config, images.shape[0], images.shape[1], images.shape[-1])
    state = initial_state(images, config, plan, ctx)
    steps = graphed_steps(state, ctx.device, config.precision)

    def embed() -> torch.Tensor:  # (N, k) eval-mode embeddings of the centre views
        return infer(state.model, images, partial(centre_view, plan=plan), ctx.device, precision=config.precision)

    resumed_from = resume(ctx, state)
    ctx.report("setup", state.epoch, plan.epochs)
    while state.epoch < plan.epochs and ctx.room_for_epoch():  # a budgeted run stops in time
        started = time.perf_counter()
        refining = state.epoch >= plan.refine_epoch
        moved: dict[str, float] = {}
        if refining:  # from here on fixed k-means targets, and no Hungarian (§1.8)
            ctx.report("refine", state.epoch, plan.epochs)
            moved = refine(state, embed(), config, ctx.generator)
        rotation_loss = rotation_epoch(images, state, steps, plan, ctx) if plan.rotation else float("nan")
        loss, images_per_s = clustering_epoch(images, state, steps, plan, ctx, reassign=not refining)
        state.scheduler.step()
        end_epoch(ctx, state, epochs=plan.epochs, stage="refine" if refining else "clustering",
                  metrics={"loss": loss, "rotation_loss": rotation_loss, "images_per_s": images_per_s, **moved},
                  started=started, labels=lambda: readout(embed(), state.means)[0])
    # the backbone's features beside the embedding: calibration looks there (docs/algorithms.md §8)
    both = infer(FeaturesAndEmbedding(state.model), images, partial(centre_view, plan=plan), ctx.device,
                 precision=config.precision)
    features, embeddings = both[:, :-config.k].contiguous(), both[:, -config.k:].contiguous()
    centres = state.means
    if plan.refine_epoch < plan.epochs:
        # after refinement a cluster is the nearest k-means centre (design.md), ids aligned with the axes
        centres = kmeans_centres(embeddings, readout(embeddings, state.means)[0], config.k,
                                 generator=ctx.generator, restarts=config.mmdc.kmeans_restarts, init=state.means)
    labels, confidences = readout(embeddings, centres)
    predictor = MMDCReadout(state.model, centres, images.shape[-1], plan.crops[0])
    return MethodOutput(labels, confidences, embeddings, centres, state.history, resumed_from,
                        state.train_seconds, predictor, resolve_precision(ctx.device, config.precision),
                        calibration_features=features)

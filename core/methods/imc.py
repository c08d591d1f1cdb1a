"""IMC-SwAV — Information Maximization Clustering via Multi-View Self-Labelling
(Ntelemis, Jin & Thomas, Knowledge-Based Systems 2022, arXiv 2103.07368).

An encoder is trained by SwAV's swapped prediction (Eq. 1): the Sinkhorn codes (Eq. 3–4) of the
two high-resolution crops supervise the tempered softmax of the prototype scores of every other
crop. A classifier MLP on the *detached* encoder features is trained alone by maximising
β·H(Y) − H(Y|U) between its outputs and the prototype distributions, over all crop pairs (Eq. 6),
plus a logit penalty. Cluster = argmax of the classifier on the full image.
Section numbers refer to docs/algorithms.md §2; the adaptations to arbitrary uploads are:

- normalisation: per-channel mean/std of the image set itself (uploads have no known constants);
- prototypes: K' = min(1000, max(10·k, N/10)) by default — the reference's 1000 for N ≥ 10k, but
  a small upload gets ~10 images per prototype at least, so the Sinkhorn equipartition does not
  spread a batch thinly over far more prototypes than it has images (swav#23: the loss stalls);
- warm-up and prototype freezing last min(configured, 10 % of all iterations), so a 60-image job
  with one step per epoch still spends most of its steps learning;
- batch = min(batch_size, N) with drop_last, which therefore always keeps at least one batch;
- crops are at least 16 px (the small VGG pools four times); the small VGG is globally pooled;
- grey-scale sets (MNIST-like) get larger crops, areas (0.4, 1) and (0.2, 0.6), and no flips:
  on a 20k MNIST subset this took ACC after 6 epochs from 0.56 to 0.82 (bench/RESULTS.md);
- learning rate: the reference's 5e-4 (meant for 500 epochs) for colour sets, 2e-3 for
  grey-scale ones, where it measured far better on the default-length schedules;
- BN read-out statistics: one pass over all (full, uncropped) images in train mode with
  cumulative averages, i.e. the population statistics of the images we label (transductive, as
  the reference's test-batch warm-up, §2.9), replacing the crop statistics from training;
- embeddings: the encoder features the classifier reads (512-d ResNet, 256-d VGG), so labels,
  centres and embeddings share one space; the projection serves the prototype cosines, and
  calibration fits its mixtures on its unit vectors (`unit_projection`).

`train_imc` at the end is the whole run in order: set-up, resume, then per epoch one pass of
training steps and one `end_epoch`; the functions above it are its step, views and read-out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.assign import sinkhorn
from core.config import ClusterConfig, IMCParams
from core.context import MethodOutput, RunContext
from core.data import augment
from core.errors import InvalidInput
from core.graphs import GraphedStep, graphs_enabled
from core.losses import logit_penalty, mutual_information_loss, swapped_prediction_loss
from core.methods.imc_plan import Plan, learning_rate, make_plan
from core.models.backbones import SmallVGG, small_resnet18
from core.models.imc_heads import IMCNet, PooledEncoder
from core.runtime import (
    autocast,
    batches,
    channels_last,
    check_finite,
    compile_if_requested,
    infer,
    prepare_model,
    resolve_precision,
)
from core.training import end_epoch, resume

JITTER = augment.Jitter(0.4, 0.4, 0.4, 0.1, p=0.8)
GREYSCALE_P = 0.25


def build_encoder(name: str, channels: int, size: int) -> tuple[nn.Module, int]:
    if name == "vgg":
        trunk = SmallVGG(channels, size).features
        width = [m for m in trunk if isinstance(m, nn.Conv2d)][-1].out_channels  # 256
        return PooledEncoder(trunk, width), width
    if name == "resnet18":
        return small_resnet18(channels, stem_pool="none", conv_init="fan_out"), 512  # CIFAR stem, no max-pool (§2.2)
    raise InvalidInput(f"backbone={name!r} is unknown; use auto, resnet18 or vgg")


@torch.no_grad()
def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (C,) of the images in [0, 1], accumulated in float64."""
    total = torch.zeros(images.shape[1], dtype=torch.float64, device=images.device)
    squares = torch.zeros_like(total)
    for part in batches(images.shape[0], chunk):
        x = images[part].double().div_(255.0)
        total += x.sum((0, 2, 3))
        squares += x.square().sum((0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt().clamp_min(1e-3)  # a flat set stays finite
    return mean.float(), std.float()


def centres_of(embeddings: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Mean embedding per cluster (k, d); an empty cluster gets the zero vector."""
    sums = torch.zeros(k, embeddings.shape[1], device=embeddings.device).index_add_(0, labels, embeddings)
    counts = torch.bincount(labels, minlength=k).clamp_min(1).unsqueeze(1)
    return sums / counts


class IMCReadout(nn.Module):
    """The trained encoder and classifier with the set's normalisation: uint8 images ->
    (classifier argmax, top probability), as `readout` on the full images."""

    def __init__(self, net: IMCNet, mean: torch.Tensor, std: torch.Tensor, temperature: float):
        super().__init__()
        self.net = net
        self.temperature = temperature  # of the prototype softmax the classifier was trained against
        self.register_buffer("mean", mean.detach().clone())  # (C,)
        self.register_buffer("std", std.detach().clone())  # (C,)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The encoder features (N, F): the run's `embeddings` for its own images."""
        return self.net.encoder(channels_last(augment.normalise(augment.to_unit(images), self.mean, self.std)))

    def codes(self, features: torch.Tensor) -> torch.Tensor:
        """The prototype distributions U (N, K') of encoder features: what the classifier informs
        on (Eq. 6), so heads for other k can be fitted to them (core/kheads.py)."""
        return F.softmax(self.net.scores(features).float() / self.temperature, dim=1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.embed(images)  # (N, F)
        confidences, labels = F.softmax(self.net.classifier(features).float(), dim=1).max(1)
        return labels, confidences


@dataclass
class IMCState:
    """What an IMC-SwAV run changes as it trains: all its checkpoint holds besides the generator."""

    model: IMCNet
    optimizer: torch.optim.Adam
    epoch: int = 0
    iteration: int = 0  # optimiser steps taken: the warm-up and the prototype freeze count them
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "iteration": self.iteration}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.iteration = int(saved["iteration"])


def initial_state(images: torch.Tensor, config: ClusterConfig, plan: Plan, ctx: RunContext) -> IMCState:
    """A fresh network and optimiser for `images` (N, C, S, S)."""
    encoder, feature_dim = build_encoder(plan.backbone, images.shape[1], images.shape[-1])
    net = IMCNet(encoder, feature_dim, config.k, plan.prototypes, config.imc.project_dim)
    model = prepare_model(net, ctx.device)
    compile_if_requested(model.encoder)
    p = config.imc
    # Adam with coupled L2 on every parameter, as the reference (not AdamW); capturable: its
    # step counter lives on the device, so the step can replay as a CUDA graph
    optimizer = torch.optim.Adam(model.parameters(), lr=plan.lr, betas=p.betas, weight_decay=p.weight_decay,
                                 capturable=graphs_enabled(ctx.device))
    return IMCState(model, optimizer)


@dataclass(frozen=True)
class Views:
    """The multi-crop views of a batch (§2.6) and the full images, in the set's normalisation."""

    plan: Plan
    params: IMCParams
    mean: torch.Tensor  # (C,) of the image set itself, see channel_stats
    std: torch.Tensor  # (C,)
    generator: torch.Generator

    def crops(self, raw: torch.Tensor, count: int, size: int, scale: tuple[float, float]) -> torch.Tensor:
        """`count` augmented crops of each image, crop-major: (count·B, C, size, size). Every crop
        draws its own parameters; one batched pass makes them all (fewer kernel launches)."""
        g = self.generator
        x = augment.random_resized_crops(raw.repeat(count, 1, 1, 1), size, g, scale=scale, flip=self.plan.flip)
        x = augment.random_grayscale(augment.color_jitter(x, g, JITTER), g, p=GREYSCALE_P)
        return channels_last(augment.normalise(x, self.mean, self.std))

    def train(self, raw: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The high-resolution crops, then the low ones (if any)."""
        p, plan = self.params, self.plan
        groups = [(p.n_high, plan.high_size, plan.high_scale), (p.n_low, plan.low_size, plan.low_scale)]
        return tuple(self.crops(raw, count, size, scale) for count, size, scale in groups if count > 0)

    def full(self, raw: torch.Tensor) -> torch.Tensor:
        return augment.normalise(augment.to_unit(raw), self.mean, self.std)


# -- the step: tensors in, tensors out, no random draws (it may replay as a CUDA graph) --------
def losses_of(model: IMCNet, views: tuple[torch.Tensor, ...], p: IMCParams, device: torch.device,
              precision: str) -> dict[str, torch.Tensor]:
    """L_swav, L_MI and L_lgt of one batch's views (see Views.train)."""
    batch = views[0].shape[0] // p.n_high
    model.prototypes.renormalise()
    with autocast(device, precision):
        # one encoder pass per resolution, as SwAV's multi-crop (the reference: one per crop)
        features = torch.cat([model.encoder(x) for x in views])  # (V·B, F)
        scores = model.scores(features).float().split(batch)  # V × (B, K')
        logits = [model.classifier(f.detach()).float() for f in features.split(batch)]  # V × (B, C)
    codes = [sinkhorn(scores[s].detach(), epsilon=p.epsilon, iterations=p.sinkhorn_iters)
             for s in range(p.n_high)]
    swav = swapped_prediction_loss(codes, scores, p.temperature)
    p_u = [torch.softmax(u.detach() / p.temperature, dim=1) for u in scores]
    p_y = [torch.softmax(y, dim=1) for y in logits]
    mi = torch.stack([mutual_information_loss(py, pu, p.beta) for py in p_y for pu in p_u]).mean()
    penalty = torch.stack([logit_penalty(y) for y in logits]).mean()  # same for every prototype crop
    return {"loss": swav + mi + penalty, "swav_loss": swav, "mi_loss": mi, "logit_penalty": penalty}


def training_step(state: IMCState, plan: Plan, p: IMCParams, device: torch.device, precision: str,
                  *views: torch.Tensor) -> dict[str, torch.Tensor]:
    """One optimiser step on a batch's views; returns the detached losses."""
    losses = losses_of(state.model, views, p, device, precision)
    state.optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    if state.iteration < plan.freeze_iters:
        state.model.prototypes.weight.grad = None  # Adam skips it: frozen, no decay either
    state.optimizer.step()
    return {name: value.detach() for name, value in losses.items()}


def graphed_step(state: IMCState, plan: Plan, config: ClusterConfig, device: torch.device) -> GraphedStep:
    """On CUDA the step replays as a graph once the learning rate is steady (core/graphs.py); the
    prototype freeze is baked into a graph, so it is part of the key."""
    return GraphedStep(partial(training_step, state, plan, config.imc, device, config.precision), device,
                       optimizer=state.optimizer, key=lambda: state.iteration < plan.freeze_iters)


# -- the epoch and the read-out --------------------------------------------------------------
def train_epoch(images: torch.Tensor, state: IMCState, step: GraphedStep, views: Views, plan: Plan,
                p: IMCParams, ctx: RunContext) -> dict[str, float]:
    """One pass over shuffled full batches; returns mean losses and training images/s.
    Losses are summed on the device: no host sync per step, one per epoch."""
    totals: dict[str, torch.Tensor] = {}
    started, seen = time.perf_counter(), 0
    for n, index in enumerate(shuffled_batches(images.shape[0], plan, ctx.generator)):
        for group in state.optimizer.param_groups:
            group["lr"] = learning_rate(p, plan, state.iteration, state.epoch)
        losses = step(*views.train(images[index]))
        state.iteration += 1
        for name, value in losses.items():
            totals[name] = totals[name] + value if name in totals else value.clone()
        seen += len(index)
        if n % 50 == 0:
            ctx.report("clustering", state.epoch, plan.epochs, loss=float(losses["loss"]))
    check_finite(totals["loss"], "IMC", state.epoch + 1)
    record = {name: float(total) / plan.steps_per_epoch for name, total in totals.items()}
    return record | {"images_per_s": seen / (time.perf_counter() - started)}


def shuffled_batches(n: int, plan: Plan, g: torch.Generator) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=g, device=g.device)
    return list(order.split(plan.batch_size))[: plan.steps_per_epoch]  # drop_last


@torch.no_grad()
def refresh_batch_norm(model: IMCNet, images: torch.Tensor, views: Views, batch_size: int, precision: str) -> None:
    """Set every BN's running statistics to the average over one train-mode pass of the full
    images (momentum None = cumulative average). Training never reads running statistics, so
    this changes nothing about the trajectory, only what eval mode sees."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    n = images.shape[0]
    # near-equal chunks of >= batch_size images: no size-1 batch
    with autocast(images.device, precision):
        for part in torch.arange(n, device=images.device).tensor_split(max(1, n // batch_size)):
            model(channels_last(views.full(images[part])))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum


def readout(model: IMCNet, images: torch.Tensor, views: Views, batch_size: int,
            precision: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(labels, confidences, embeddings): classifier argmax and top probability on the full
    images (§2.9); embeddings are the encoder features the classifier reads."""
    refresh_batch_norm(model, images, views, batch_size, precision)
    model.eval()
    embeddings = infer(model.encoder, images, views.full, images.device, precision=precision)  # (N, F)
    with torch.no_grad(), autocast(images.device, precision):
        logits = torch.cat([model.classifier(embeddings[part]).float()
                            for part in batches(embeddings.shape[0], 1024)])
    model.train()
    confidences, labels = F.softmax(logits, dim=1).max(1)
    return labels, confidences, embeddings


def train_imc(images: torch.Tensor, config: ClusterConfig, ctx: RunContext) -> MethodOutput:
    """Train IMC-SwAV on `images` (N, C, S, S) uint8 on ctx.device; resume from ctx.checkpoint."""
    plan = make_plan(config, images.shape[0], images.shape[1], images.shape[-1])
    state = initial_state(images, config, plan, ctx)
    step = graphed_step(state, plan, config, ctx.device)
    views = Views(plan, config.imc, *channel_stats(images), ctx.generator)
    resumed_from = resume(ctx, state)
    ctx.report("setup", state.epoch, plan.epochs)
    while state.epoch < plan.epochs and ctx.room_for_epoch():  # a budgeted run stops in time
        started = time.perf_counter()
        metrics = train_epoch(images, state, step, views, plan, config.imc, ctx)
        end_epoch(ctx, state, epochs=plan.epochs, stage="clustering", metrics=metrics, started=started,
                  labels=lambda: readout(state.model, images, views, plan.batch_size, config.precision)[0])
    labels, confidences, embeddings = readout(state.model, images, views, plan.batch_size, config.precision)
    centres = centres_of(embeddings, labels, config.k)
    predictor = IMCReadout(state.model, views.mean, views.std, config.imc.temperature)
    return MethodOutput(labels, confidences, embeddings, centres, state.history, resumed_from,
                        state.train_seconds, predictor, resolve_precision(ctx.device, config.precision),
                        calibration_features=unit_projection(state.model, embeddings))


def unit_projection(model: IMCNet, features: torch.Tensor) -> torch.Tensor:
    """(N, project_dim) float32: the unit vectors the prototypes score, where calibration fits its
    mixtures (docs/algorithms.md §8): on the encoder features they split digit sub-styles the
    classifier keeps together, and read a 70,000-image MNIST job low (bench/RESULTS.md,
    "Calibration on IMC-SwAV's projection")."""
    with torch.no_grad():
        return torch.cat([F.normalize(model.project(features[part].float()), dim=1)
                          for part in batches(features.shape[0], 4096)])

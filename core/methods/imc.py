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
  centres and embeddings share one space; the projection only serves the prototype cosines.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.assign import sinkhorn
from core.config import ClusterConfig, IMCParams
from core.context import MethodOutput, RunContext
from core.data import augment
from core.graphs import GraphedStep, graphs_enabled
from core.loop import run_epochs
from core.losses import logit_penalty, mutual_information_loss, swapped_prediction_loss
from core.models.backbones import SmallVGG, choose_backbone, small_resnet18
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

DEFAULT_EPOCHS = 50
JITTER = augment.Jitter(0.4, 0.4, 0.4, 0.1, p=0.8)
GREYSCALE_P = 0.25
MIN_CROP = 16
COLOUR_HIGH_SCALE, COLOUR_LOW_SCALE = (0.2, 1.0), (0.08, 0.4)  # RandomResizedCrop areas (§2.6)
GREY_HIGH_SCALE, GREY_LOW_SCALE = (0.4, 1.0), (0.2, 0.6)  # MNIST-like: whole strokes stay in view
COLOUR_LR, GREY_LR = 5e-4, 2e-3  # Adam's base learning rate when IMCParams.lr is None
SCHEDULE_FRACTION = 0.1  # warm-up / prototype freezing: at most this share of all iterations


@dataclass(frozen=True)
class Plan:
    """IMC settings resolved for one image set."""

    epochs: int
    batch_size: int
    steps_per_epoch: int
    lr: float  # base learning rate, before warm-up and steps
    backbone: str
    prototypes: int
    high_size: int
    low_size: int
    warmup_iters: int
    freeze_iters: int
    milestones: tuple[int, ...]  # epochs after which the learning rate is multiplied by gamma
    high_scale: tuple[float, float]  # crop area fractions
    low_scale: tuple[float, float]
    flip: bool


def default_prototypes(n: int, k: int) -> int:
    return min(1000, max(10 * k, n // 10))


def make_plan(config: ClusterConfig, n: int, channels: int, size: int) -> Plan:
    p: IMCParams = config.imc
    epochs = config.epochs or DEFAULT_EPOCHS
    batch_size = min(config.batch_size or 256, n)
    steps = n // batch_size  # drop_last; batch_size <= n, so at least one step
    total = epochs * steps
    scaled = max(1, math.ceil(SCHEDULE_FRACTION * total))
    return Plan(
        epochs=epochs, batch_size=batch_size, steps_per_epoch=steps,
        lr=p.lr if p.lr is not None else (COLOUR_LR if channels == 3 else GREY_LR),
        backbone=choose_backbone(config.backbone, channels, size),
        prototypes=p.prototypes or default_prototypes(n, config.k),
        high_size=max(MIN_CROP, round(p.high_crop * size)),
        low_size=max(MIN_CROP, round(p.low_crop * size)),
        warmup_iters=min(p.warmup_iters, scaled), freeze_iters=min(p.freeze_prototypes_iters, scaled),
        milestones=tuple(round(m * epochs) for m in p.lr_milestones),
        high_scale=p.high_scale or (COLOUR_HIGH_SCALE if channels == 3 else GREY_HIGH_SCALE),
        low_scale=p.low_scale or (COLOUR_LOW_SCALE if channels == 3 else GREY_LOW_SCALE),
        flip=p.flip if p.flip is not None else channels == 3,
    )


def learning_rate(p: IMCParams, plan: Plan, iteration: int, epoch: int) -> float:
    """Linear warm-up per iteration times MultiStepLR per epoch (§2.7)."""
    warmup = min(1.0, (iteration + 1) / plan.warmup_iters)
    return plan.lr * warmup * p.lr_gamma ** sum(epoch >= m for m in plan.milestones)


def build_encoder(name: str, channels: int, size: int) -> tuple[nn.Module, int]:
    if name == "vgg":
        trunk = SmallVGG(channels, size).features
        width = [m for m in trunk if isinstance(m, nn.Conv2d)][-1].out_channels  # 256
        return PooledEncoder(trunk, width), width
    if name == "resnet18":
        return small_resnet18(channels, stem_pool="none", conv_init="fan_out"), 512  # CIFAR stem, no max-pool (§2.2)
    raise ValueError(f"backbone={name!r} is unknown; use auto, resnet18 or vgg")


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
    (classifier argmax, top probability), as `Trainer.readout` on the full images."""

    def __init__(self, net: IMCNet, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("mean", mean.detach().clone())  # (C,)
        self.register_buffer("std", std.detach().clone())  # (C,)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = augment.normalise(augment.to_unit(images), self.mean, self.std)
        features = self.net.encoder(channels_last(x))  # (N, F)
        confidences, labels = F.softmax(self.net.classifier(features).float(), dim=1).max(1)
        return labels, confidences


class Trainer:
    """The state of one IMC-SwAV run: network, optimiser, iteration counter, history."""

    def __init__(self, images: torch.Tensor, config: ClusterConfig, ctx: RunContext):
        self.images, self.config, self.ctx = images, config, ctx
        n, channels, size = images.shape[0], images.shape[1], images.shape[-1]
        self.plan = make_plan(config, n, channels, size)
        encoder, feature_dim = build_encoder(self.plan.backbone, channels, size)
        net = IMCNet(encoder, feature_dim, config.k, self.plan.prototypes, config.imc.project_dim)
        self.model = prepare_model(net, ctx.device)
        compile_if_requested(self.model.encoder)
        p = config.imc
        # Adam with coupled L2 on every parameter, as the reference (not AdamW); capturable: its
        # step counter lives on the device, so the step can replay as a CUDA graph
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.plan.lr, betas=p.betas,
                                          weight_decay=p.weight_decay, capturable=graphs_enabled(ctx.device))
        self.graphed_step = GraphedStep(self._losses_and_step, ctx.device, optimizer=self.optimizer,
                                        key=lambda: self.iteration < self.plan.freeze_iters)
        self.mean, self.std = channel_stats(images)
        self.epoch, self.iteration = 0, 0
        self.history: list[dict[str, float]] = []
        self.train_seconds = 0.0

    # -- views -------------------------------------------------------------------------------
    def crops(self, raw: torch.Tensor, count: int, size: int, scale: tuple[float, float]) -> torch.Tensor:
        """`count` augmented crops of each image, crop-major: (count·B, C, size, size). Every crop
        draws its own parameters; one batched pass makes them all (fewer kernel launches)."""
        g = self.ctx.generator
        x = augment.random_resized_crops(raw.repeat(count, 1, 1, 1), size, g, scale=scale, flip=self.plan.flip)
        x = augment.random_grayscale(augment.color_jitter(x, g, JITTER), g, p=GREYSCALE_P)
        return channels_last(augment.normalise(x, self.mean, self.std))

    def views(self, raw: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The multi-crop views of a batch: the high-resolution crops, then the low ones (if any)."""
        p, plan = self.config.imc, self.plan
        groups = [(p.n_high, plan.high_size, plan.high_scale), (p.n_low, plan.low_size, plan.low_scale)]
        return tuple(self.crops(raw, count, size, scale) for count, size, scale in groups if count > 0)

    def full_view(self, raw: torch.Tensor) -> torch.Tensor:
        return augment.normalise(augment.to_unit(raw), self.mean, self.std)

    # -- training ----------------------------------------------------------------------------
    def losses(self, raw: torch.Tensor) -> dict[str, torch.Tensor]:
        """L_swav, L_MI and L_lgt for one batch of raw images (B, C, S, S)."""
        return self.losses_of(*self.views(raw))

    def losses_of(self, *views: torch.Tensor) -> dict[str, torch.Tensor]:
        """The losses of one batch's views (see `views`); no random draws."""
        net, p = self.model, self.config.imc
        batch = views[0].shape[0] // p.n_high
        net.prototypes.renormalise()
        with autocast(self.ctx.device, self.config.precision):
            # one encoder pass per resolution, as SwAV's multi-crop (the reference: one per crop)
            features = torch.cat([net.encoder(x) for x in views])  # (V·B, F)
            scores = net.scores(features).float().split(batch)  # V × (B, K')
            logits = [net.classifier(f.detach()).float() for f in features.split(batch)]  # V × (B, C)
        codes = [sinkhorn(scores[s].detach(), epsilon=p.epsilon, iterations=p.sinkhorn_iters)
                 for s in range(p.n_high)]
        swav = swapped_prediction_loss(codes, scores, p.temperature)
        p_u = [torch.softmax(u.detach() / p.temperature, dim=1) for u in scores]
        p_y = [torch.softmax(y, dim=1) for y in logits]
        mi = torch.stack([mutual_information_loss(py, pu, p.beta) for py in p_y for pu in p_u]).mean()
        penalty = torch.stack([logit_penalty(y) for y in logits]).mean()  # same for every prototype crop
        return {"loss": swav + mi + penalty, "swav_loss": swav, "mi_loss": mi, "logit_penalty": penalty}

    def train_epoch(self) -> dict[str, float]:
        """One pass over shuffled full batches; returns mean losses and training images/s.
        Losses are summed on the device: no host sync per step, one per epoch."""
        totals: dict[str, torch.Tensor] = {}
        started, seen = time.perf_counter(), 0
        for step, index in enumerate(self.shuffled_batches()):
            self.set_learning_rate()
            losses = self.graphed_step(*self.views(self.images[index]))
            self.iteration += 1
            for name, value in losses.items():
                totals[name] = totals[name] + value if name in totals else value.clone()
            seen += len(index)
            if step % 50 == 0:
                self.ctx.report("clustering", self.epoch, self.plan.epochs, loss=float(losses["loss"]))
        check_finite(totals["loss"], "IMC", self.epoch + 1)
        record = {name: float(total) / self.plan.steps_per_epoch for name, total in totals.items()}
        return record | {"images_per_s": seen / (time.perf_counter() - started)}

    def set_learning_rate(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.config.imc, self.plan, self.iteration, self.epoch)

    def _losses_and_step(self, *views: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimiser step on a batch's views; returns the detached losses. Tensors in and out,
        so on CUDA it replays as a graph once the learning rate is steady (core/graphs.py)."""
        losses = self.losses_of(*views)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if self.iteration < self.plan.freeze_iters:
            self.model.prototypes.weight.grad = None  # Adam skips it: frozen, no decay either
        self.optimizer.step()
        return {name: value.detach() for name, value in losses.items()}

    def shuffled_batches(self) -> list[torch.Tensor]:
        order = torch.randperm(self.images.shape[0], generator=self.ctx.generator, device=self.ctx.device)
        return list(order.split(self.plan.batch_size))[: self.plan.steps_per_epoch]  # drop_last

    # -- read-out ----------------------------------------------------------------------------
    @torch.no_grad()
    def refresh_batch_norm(self) -> None:
        """Set every BN's running statistics to the average over one train-mode pass of the full
        images (momentum None = cumulative average). Training never reads running statistics, so
        this changes nothing about the trajectory, only what eval mode sees."""
        norms = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        self.model.train()
        n = self.images.shape[0]
        # near-equal chunks of >= batch_size images: no size-1 batch
        with autocast(self.ctx.device, self.config.precision):
            for part in torch.arange(n, device=self.ctx.device).tensor_split(max(1, n // self.plan.batch_size)):
                self.model(channels_last(self.full_view(self.images[part])))
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum

    def readout(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(labels, confidences, embeddings): classifier argmax and top probability on the full
        images; embeddings are the encoder features the classifier reads."""
        self.refresh_batch_norm()
        self.model.eval()
        embeddings = infer(self.model.encoder, self.images, self.full_view, self.ctx.device,
                           precision=self.config.precision)  # (N, F)
        with torch.no_grad(), autocast(self.ctx.device, self.config.precision):
            logits = torch.cat([self.model.classifier(embeddings[part]).float()
                                for part in batches(embeddings.shape[0], 1024)])
        self.model.train()
        confidences, labels = F.softmax(logits, dim=1).max(1)
        return labels, confidences, embeddings

    # -- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict[str, object]:
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "generator": self.ctx.generator.get_state(), "epoch": self.epoch, "iteration": self.iteration,
            "history": self.history, "train_seconds": self.train_seconds,
            "config": self.config.to_dict(), "n_images": self.images.shape[0],
        }

    def restore(self, state: dict[str, object]) -> None:
        self.model.load_state_dict(state["model"])  # type: ignore[arg-type]
        self.optimizer.load_state_dict(state["optimizer"])  # type: ignore[arg-type]
        self.ctx.generator.set_state(state["generator"])  # type: ignore[arg-type]
        self.epoch = int(state["epoch"])  # type: ignore[call-overload]
        self.iteration = int(state["iteration"])  # type: ignore[call-overload]
        self.history = list(state["history"])  # type: ignore[call-overload]
        self.train_seconds = float(state["train_seconds"])  # type: ignore[arg-type]


def train_imc(images: torch.Tensor, config: ClusterConfig, ctx: RunContext) -> MethodOutput:
    """Train IMC-SwAV on `images` (N, C, S, S) uint8 on ctx.device; resume from ctx.checkpoint."""
    trainer = Trainer(images, config, ctx)
    plan = trainer.plan
    resumed_from = run_epochs(trainer, ctx, epochs=plan.epochs, config=config.to_dict(),
                              n_images=images.shape[0], train_epoch=lambda: ("clustering", trainer.train_epoch()),
                              predict=lambda: trainer.readout()[0])
    labels, confidences, embeddings = trainer.readout()
    centres = centres_of(embeddings, labels, config.k)
    predictor = IMCReadout(trainer.model, trainer.mean, trainer.std)
    return MethodOutput(labels, confidences, embeddings, centres, trainer.history, resumed_from,
                        trainer.train_seconds, predictor, resolve_precision(ctx.device, config.precision))

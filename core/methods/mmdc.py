"""MMDC — Multi-Modal Deep Clustering (Shiran & Weinshall, ICPR 2020, arXiv 1912.02678).

Unit-norm embeddings regress onto targets sampled once from a k-component mixture on the
sphere (σ = 0: the one-hot means). Each batch first re-permutes its own targets among its
images with the Hungarian algorithm (cost ‖z_i − t_j‖, §1.5), then takes an SGD step on the MSE
(§1.4). ResNet runs alternate a full rotation-prediction epoch with each clustering epoch
(§1.6). From the refinement epoch on, k-means on all embeddings gives fixed one-hot targets whose
ids are aligned with the previous ones (§1.8). Cluster = nearest mixture mean (§1.9).
Section numbers refer to docs/algorithms.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.assign import hungarian
from core.config import ClusterConfig, MMDCParams
from core.context import MethodOutput, RunContext
from core.data import augment
from core.graphs import GraphedStep
from core.loop import run_epochs
from core.models.backbones import build_backbone, choose_backbone
from core.models.heads import SphereHead, linear_head
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

# The reference's crops as fractions of the side; on a 20k MNIST subset they beat the smaller
# (0.75, 0.625, 0.5) crops used until round 5 at every evaluation (bench/RESULTS.md, "MMDC crops")
GREY_CROPS = (24 / 28, 20 / 28, 16 / 28)  # MNIST: 24, 20 or 16 px of 28
COLOUR_CROPS = (20 / 32,)  # CIFAR-10: 20 px of 32
CONFIDENCE_TEMPERATURE = 0.1
DEFAULT_EPOCHS = 50
# The reference's batch is 128 (547 steps an MNIST epoch); a small set keeps at least MIN_STEPS
# steps an epoch, down to batch 32, since its schedule counts epochs but learns per step: on the
# 1,797 digits 12 epochs gave ACC 0.467 at batch 128 and 0.660 at 64 for 24 % more CPU time
# (bench/RESULTS.md, "Small sets").
BATCH, MIN_BATCH, MIN_STEPS = 128, 32, 50


@dataclass(frozen=True)
class Schedule:
    """The reference's epoch shape, as fractions of the run (algorithms.md §1.10)."""

    refine_start: float
    lr_decay_at: float
    lr_decay_gamma: float


GREY_SCHEDULE = Schedule(refine_start=20 / 50, lr_decay_at=40 / 50, lr_decay_gamma=0.1)  # MNIST
COLOUR_SCHEDULE = Schedule(refine_start=350 / 400, lr_decay_at=300 / 400, lr_decay_gamma=0.2)  # CIFAR-10


@dataclass(frozen=True)
class Plan:
    """MMDC settings resolved for one image set (the `None` defaults of MMDCParams filled in)."""

    epochs: int
    batch_size: int
    backbone: str
    rotation: bool
    crops: tuple[float, ...]
    flip: bool
    jitter: bool
    rotate_degrees: float
    refine_epoch: int
    decay_epoch: int
    decay_gamma: float


def make_plan(config: ClusterConfig, n: int, channels: int, size: int) -> Plan:
    p: MMDCParams = config.mmdc
    colour = channels == 3
    backbone = choose_backbone(config.backbone, channels, size)
    epochs = config.epochs or DEFAULT_EPOCHS
    default_crops = COLOUR_CROPS if colour else GREY_CROPS
    schedule = COLOUR_SCHEDULE if colour else GREY_SCHEDULE
    return Plan(
        epochs=epochs,
        batch_size=min(config.batch_size or max(MIN_BATCH, min(BATCH, n // MIN_STEPS)), n),
        backbone=backbone,
        rotation=p.rotation if p.rotation is not None else backbone == "resnet18",
        crops=tuple(p.crop_fractions) if p.crop_fractions else default_crops,
        flip=p.flip if p.flip is not None else colour,
        jitter=p.color_jitter if p.color_jitter is not None else colour,
        rotate_degrees=p.rotate_degrees if p.rotate_degrees is not None else (0.0 if colour else 25.0),
        refine_epoch=round(_given(p.refine_start, schedule.refine_start) * epochs),
        decay_epoch=round(_given(p.lr_decay_at, schedule.lr_decay_at) * epochs),
        decay_gamma=_given(p.lr_decay_gamma, schedule.lr_decay_gamma),
    )


def _given(value: float | None, default: float) -> float:
    return default if value is None else value


class MMDCNet(nn.Module):
    def __init__(self, backbone: nn.Module, k: int, rotation: bool):
        super().__init__()
        self.backbone = backbone
        self.cluster_head = SphereHead(backbone.feature_dim, k)  # d = k (§1.2)
        self.rotation_head = linear_head(backbone.feature_dim, 4) if rotation else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cluster_head(self.backbone(x))  # (B, k), unit norm

    def rotation_logits(self, x: torch.Tensor) -> torch.Tensor:
        assert self.rotation_head is not None
        return self.rotation_head(self.backbone(x))  # (B, 4)


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


@dataclass
class PendingAssignment:
    """A batch's cost matrix on its way to the host, and the batch's targets to permute."""

    cost: HostCopy
    batch_targets: torch.Tensor  # (B, k)

    def finish(self) -> torch.Tensor:
        """The targets permuted among the batch's images to minimise Σ‖z_i − t_π(i)‖ (§1.5)."""
        perm = upload(hungarian(self.cost.wait().numpy()), self.batch_targets.device)
        return self.batch_targets[perm]


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

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.net(channels_last(augment.centre_crops(images, self.size, self.crop))).float()  # (N, k)
        with torch.autocast(z.device.type, enabled=False):  # the run's read-out is fp32, as here
            return readout(z, self.centres)


class Trainer:
    """The state of one MMDC run: model, optimiser, targets; one method per epoch phase."""

    def __init__(self, images: torch.Tensor, config: ClusterConfig, ctx: RunContext):
        self.images, self.config, self.ctx = images, config, ctx
        n, channels, size = images.shape[0], images.shape[1], images.shape[-1]
        self.plan = make_plan(config, n, channels, size)
        self.size = size
        backbone = build_backbone(self.plan.backbone, channels, size, stem_pool="mmdc")
        self.model = prepare_model(MMDCNet(backbone, config.k, self.plan.rotation), ctx.device)
        compile_if_requested(self.model.backbone)
        p = config.mmdc
        self.optimizer = torch.optim.SGD(sgd_param_groups(self.model, p.weight_decay), lr=p.lr, momentum=p.momentum)
        # The reference's zero_grad() (torch 1.x) fills gradients with zeros instead of dropping
        # them, so the head a step does not use still takes its weight decay and momentum: the
        # clustering head shrinks during rotation epochs and the rotation head during clustering
        # epochs. Gradients that exist from the start and are only ever zeroed do the same here.
        for parameter in self.model.parameters():
            parameter.grad = torch.zeros_like(parameter)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones=[self.plan.decay_epoch], gamma=self.plan.decay_gamma
        )
        self.targets, self.means = sample_targets(n, config.k, p, ctx.generator)
        # on CUDA each kind of step replays as one graph once steady (core/graphs.py)
        self.regression_step = GraphedStep(self._regress, ctx.device, optimizer=self.optimizer)
        self.rotation_step = GraphedStep(self._predict_rotations, ctx.device, optimizer=self.optimizer)
        self.assignment_cost = GraphedStep(self._assignment_cost, ctx.device)
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        self.train_seconds = 0.0

    # -- views -------------------------------------------------------------------------------
    def train_view(self, raw: torch.Tensor) -> torch.Tensor:
        g, plan = self.ctx.generator, self.plan
        x = augment.to_unit(raw)
        if plan.jitter:  # jitter and grey-scale come before the geometry, as in the reference
            x = augment.random_grayscale(augment.color_jitter(x, g), g, p=0.2)
        return augment.random_crops(x, self.size, g, crop_fractions=plan.crops, flip=plan.flip,
                                    max_degrees=plan.rotate_degrees)

    def centre_view(self, raw: torch.Tensor) -> torch.Tensor:
        return augment.centre_crops(raw, self.size, self.plan.crops[0])

    # -- epochs ------------------------------------------------------------------------------
    def rotation_epoch(self) -> float:
        """One pass of 4-way rotation prediction; the four rotations share one forward (§1.6)."""
        total = torch.zeros((), device=self.ctx.device)
        batches = self.shuffled_batches()
        for index in batches:
            rotated, labels = augment.rotations(self.images[index])  # (4B, C, S, S) uint8
            x = augment.random_crops(rotated, self.size, self.ctx.generator, crop_fractions=self.plan.crops)
            total += self.rotation_step(channels_last(x), labels)
        check_finite(total, "MMDC rotation", self.epoch + 1)
        return float(total) / max(len(batches), 1)

    def clustering_epoch(self, reassign: bool) -> tuple[float, float]:
        """Returns (mean loss, training images/s).

        With `reassign`, batch t+1's Hungarian is solved on the host while the device trains on
        batch t (design: the GPU never idles for the assignment). Its cost therefore comes from
        the weights before step t, one SGD step older than the reference's, on CPU and GPU alike.
        """
        total, seen, started = torch.zeros((), device=self.ctx.device), 0, time.perf_counter()
        batches = self.shuffled_batches()
        pending = self.start_assignment(batches[0]) if reassign else None
        for step, index in enumerate(batches):
            if pending is not None:
                self.targets[index] = pending.finish()
                pending = self.start_assignment(batches[step + 1]) if step + 1 < len(batches) else None
            loss = self.regression_step(channels_last(self.train_view(self.images[index])), self.targets[index])
            total += loss
            seen += len(index)
            if step % 50 == 0:
                self.ctx.report("clustering", self.epoch, self.plan.epochs, loss=float(loss))
        check_finite(total, "MMDC clustering", self.epoch + 1)
        return float(total) / max(len(batches), 1), seen / (time.perf_counter() - started)

    def start_assignment(self, index: torch.Tensor) -> PendingAssignment:
        """Embed the batch's centre view (eval mode, as the reference) and start copying the cost
        matrix to the host; the solve happens in `finish()`."""
        batch_targets = self.targets[index]
        cost = self.assignment_cost(channels_last(self.centre_view(self.images[index])), batch_targets)
        return PendingAssignment(HostCopy(cost), batch_targets)

    # -- steps: tensors in, tensors out, no random draws (each may replay as a CUDA graph) ------
    def _regress(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with autocast(self.ctx.device, self.config.precision):
            z = self.model(x).float()
            loss = F.mse_loss(z, targets)  # = (2 - 2 z·t) / k per image (§1.4)
        self.step(loss)
        return loss.detach()

    def _predict_rotations(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with autocast(self.ctx.device, self.config.precision):
            loss = F.cross_entropy(self.model.rotation_logits(x).float(), labels)
        self.step(loss)
        return loss.detach()

    @torch.no_grad()
    def _assignment_cost(self, view: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(B, B) plain Euclidean distances from the eval-mode embeddings to the batch's targets."""
        self.model.eval()
        with autocast(self.ctx.device, self.config.precision):
            z_view = self.model(view)
        self.model.train()
        return torch.cdist(z_view.float(), targets.float())

    def refine(self) -> dict[str, float]:
        """k-means on all embeddings -> fixed one-hot targets aligned with the previous ids (§1.8).

        Returns how much the targets moved: the share of images that kept their cluster id, and
        the smallest cluster's share of the images (nothing rebalances k-means clusters)."""
        self.ctx.report("refine", self.epoch, self.plan.epochs)
        embeddings = self.embed()
        previous = self.targets.argmax(1)
        self.targets = kmeans_targets(embeddings, previous, self.config.k,
                                      generator=self.ctx.generator, restarts=self.config.mmdc.kmeans_restarts)
        labels = self.targets.argmax(1)
        sizes = torch.bincount(labels, minlength=self.config.k)
        return {"refine_kept": float((labels == previous).float().mean()),
                "refine_smallest_share": float(sizes.min()) / labels.shape[0]}

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=False)  # see __init__: as the reference
        loss.backward()
        self.optimizer.step()

    def shuffled_batches(self) -> list[torch.Tensor]:
        order = torch.randperm(self.images.shape[0], generator=self.ctx.generator, device=self.ctx.device)
        parts = list(order.split(self.plan.batch_size))
        if len(parts) > 1 and len(parts[-1]) < 2:  # BatchNorm needs two images in train mode
            parts.pop()
        return parts

    def embed(self) -> torch.Tensor:
        return infer(self.model, self.images, self.centre_view, self.ctx.device, precision=self.config.precision)

    # -- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict[str, object]:
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "targets": self.targets.cpu(),
            "means": self.means.cpu(), "generator": self.ctx.generator.get_state(),
            "epoch": self.epoch, "history": self.history, "train_seconds": self.train_seconds,
            "config": self.config.to_dict(), "n_images": self.images.shape[0],
        }

    def restore(self, state: dict[str, object]) -> None:
        device = self.ctx.device
        self.model.load_state_dict(state["model"])  # type: ignore[arg-type]
        self.optimizer.load_state_dict(state["optimizer"])  # type: ignore[arg-type]
        self.scheduler.load_state_dict(state["scheduler"])  # type: ignore[arg-type]
        self.targets = state["targets"].to(device)  # type: ignore[attr-defined]
        self.means = state["means"].to(device)  # type: ignore[attr-defined]
        self.ctx.generator.set_state(state["generator"])  # type: ignore[arg-type]
        self.epoch = int(state["epoch"])  # type: ignore[call-overload]
        self.history = list(state["history"])  # type: ignore[call-overload]
        self.train_seconds = float(state["train_seconds"])  # type: ignore[arg-type]


def train_mmdc(images: torch.Tensor, config: ClusterConfig, ctx: RunContext) -> MethodOutput:
    """Train MMDC on `images` (N, C, S, S) uint8 on ctx.device; resume from ctx.checkpoint."""
    trainer = Trainer(images, config, ctx)
    plan = trainer.plan

    def train_epoch() -> tuple[str, dict[str, float]]:
        refining = trainer.epoch >= plan.refine_epoch
        moved = trainer.refine() if refining else {}
        rotation_loss = trainer.rotation_epoch() if plan.rotation else float("nan")
        loss, images_per_s = trainer.clustering_epoch(reassign=not refining)
        trainer.scheduler.step()
        stage = "refine" if refining else "clustering"
        return stage, {"loss": loss, "rotation_loss": rotation_loss, "images_per_s": images_per_s, **moved}

    resumed_from = run_epochs(trainer, ctx, epochs=plan.epochs, config=config.to_dict(),
                              n_images=images.shape[0], train_epoch=train_epoch,
                              predict=lambda: readout(trainer.embed(), trainer.means)[0])
    embeddings = trainer.embed()
    centres = trainer.means
    if plan.refine_epoch < plan.epochs:
        # after refinement a cluster is the nearest k-means centre (design.md), ids aligned with the axes
        centres = kmeans_centres(embeddings, readout(embeddings, trainer.means)[0], config.k,
                                 generator=ctx.generator, restarts=config.mmdc.kmeans_restarts,
                                 init=trainer.means)
    labels, confidences = readout(embeddings, centres)
    predictor = MMDCReadout(trainer.model, centres, trainer.size, plan.crops[0])
    return MethodOutput(labels, confidences, embeddings, centres, trainer.history, resumed_from,
                        trainer.train_seconds, predictor, resolve_precision(ctx.device, config.precision))

"""`cluster()`: the one entry point of the library."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.calibration import calibrate, calibrated_predictor, projected
from core.checkpoint import Checkpoint
from core.config import ClusterConfig
from core.context import RunContext
from core.errors import InvalidInput
from core.kheads import HeadReadout, choose_k_by_heads, imc_readout_of, prototype_codes, trained_head
from core.kselect import choose_k, training_k
from core.methods import METHODS
from core.metrics import evaluate
from core.models.backbones import choose_backbone
from core.pacing import pace
from core.predictor import Predictor
from core.recluster import recluster, reclustered_predictor
from core.result import ClusterResult, ProgressCallback
from core.runtime import configure_backend, cpu_threads, pick_device

log = logging.getLogger(__name__)


def cluster(
    images: torch.Tensor | np.ndarray,
    config: ClusterConfig,
    *,
    labels: np.ndarray | None = None,
    device: str | torch.device | None = None,
    on_progress: ProgressCallback | None = None,
    checkpoint: str | Path | None = None,
    eval_every: int = 0,
) -> ClusterResult:
    """Cluster `images` (N, C, H, W) or (N, H, W) uint8 into config.k groups (chosen when None).

    labels: known classes, only to score the result (ACC/NMI/ARI) — never used for training.
    checkpoint: training state is saved there at every epoch end; an existing file resumes.
    on_progress: called with a Progress during training; it may raise to stop the run.
    eval_every: with labels, score every this many epochs into result.history.
    """
    started = time.perf_counter()
    images = _as_images(images)
    config.validate(n_images=images.shape[0])
    if labels is not None and len(labels) != images.shape[0]:
        raise InvalidInput(f"labels has {len(labels)} entries for {images.shape[0]} images; give one per image")
    if config.image_size is not None and config.image_size != images.shape[-1]:
        images = resize(images, config.image_size)
    device = pick_device(device)
    configure_backend(device)
    images = images.to(device)
    if config.method != "kmeans":  # the result and its checkpoint name the network that trained
        config = config.with_(backbone=choose_backbone(config.backbone, images.shape[1], images.shape[-1],
                                                       cpu=device.type == "cpu"))
    # k omitted: train once at the method's training k, choose k afterwards (core/kselect.py)
    trained = config if config.k is not None else config.with_(k=training_k(config.method, images.shape[0]))
    paced = pace(images, trained, device, started=started, checkpoint=Path(checkpoint) if checkpoint else None,
                 on_progress=on_progress, recorded=config)
    trained = paced.config  # epochs fitted to the time budget; the probe came before the seeding
    config = trained.with_(k=config.k)  # what the result and the checkpoint record: k stays None
    torch.manual_seed(config.seed)  # network initialisation
    generator = torch.Generator(device=device).manual_seed(config.seed)  # every other draw
    saved = Checkpoint(Path(checkpoint), config.to_dict(), images.shape[0]) if checkpoint else None
    ctx = RunContext(device=device, generator=generator, on_progress=on_progress, checkpoint=saved,
                     labels=None if labels is None else np.asarray(labels), eval_every=eval_every,
                     plan=paced.plan, deadline=paced.deadline, method=config.method)
    log.info("clustering %d images of %s into k=%s with %s on %s", images.shape[0],
             tuple(images.shape[1:]), config.k or "auto", config.method, device)
    with cpu_threads(paced.threads):
        output = METHODS[config.method](images, trained, ctx)
    result = ClusterResult(
        labels=output.labels.cpu().numpy().astype(np.int64),
        confidences=output.confidences.float().cpu().numpy(),
        embeddings=output.embeddings.float().cpu().numpy(),
        centres=output.centres.float().cpu().numpy(),
        config=config,
        device=str(device),
        timings={"train": output.train_seconds},
        history=output.history,
        resumed_from_epoch=output.resumed_from_epoch,
        predictor=None if output.predictor is None else Predictor(
            output.predictor, image_size=images.shape[-1], channels=images.shape[1], k=len(output.centres),
            method=config.method, precision=output.precision),
        calibration_space=None if output.calibration_features is None else projected(
            output.calibration_features.float().cpu().numpy(), config.seed),
    )
    if config.k is None:
        ctx.report("choose_k", len(output.history), len(output.history))
        result = with_chosen_k(result, images.shape[0])  # re-clustering calibrates its own confidences
    else:
        result = calibrated(result)
    if labels is not None:
        result.metrics = evaluate(np.asarray(labels), result.labels, result.confidences)
    result.timings["total"] = time.perf_counter() - started
    ctx.report("done", len(output.history), len(output.history))
    return result


def with_chosen_k(result: ClusterResult, n_images: int) -> ClusterResult:
    """`result` of a run trained at its training k, re-clustered at the k chosen on its embeddings:
    by classifier heads where the read-out has prototype codes (IMC-SwAV, core/kheads.py), else by
    k-means partitions (core/kselect.py)."""
    readout = imc_readout_of(None if result.predictor is None else result.predictor.readout)
    if readout is not None:
        return with_chosen_head(result, readout, n_images)
    started = time.perf_counter()
    choice = choose_k(result.embeddings, result.config.k_max_for(n_images), seed=result.config.seed)
    clustering = recluster(result.embeddings, choice.k, seed=result.config.seed,
                           calibration_space=result.calibration_space)
    result.timings["choose_k"] = time.perf_counter() - started
    return replace(result, labels=clustering.labels, confidences=clustering.confidences,
                   centres=clustering.centres, k_choice=choice,
                   predictor=None if result.predictor is None else reclustered_predictor(result.predictor, clustering))


def with_chosen_head(result: ClusterResult, readout: torch.nn.Module, n_images: int) -> ClusterResult:
    """`result` labelled by the classifier head of the k its heads choose, calibrated."""
    assert result.predictor is not None
    started = time.perf_counter()
    codes = prototype_codes(readout, result.embeddings)
    chosen = choose_k_by_heads(result.embeddings, codes, result.config.k_max_for(n_images),
                               beta=result.config.imc.beta, seed=result.config.seed, trained=trained_head(readout))
    result.timings["choose_k"] = time.perf_counter() - started
    predictor = replace(result.predictor, readout=HeadReadout(readout, chosen.head), k=chosen.choice.k)
    return calibrated(replace(result, labels=chosen.labels, confidences=chosen.confidences, centres=chosen.centres,
                              k_choice=chosen.choice, predictor=predictor))


def calibrated(result: ClusterResult) -> ClusterResult:
    """`result` with its method's raw confidences replaced by estimates of P(cluster is right)
    (core/calibration.py), and a predictor that gives new images the same."""
    space = result.embeddings if result.calibration_space is None else result.calibration_space
    confidences, calibration = calibrate(result.confidences, space, result.labels, len(result.centres),
                                         seed=result.config.seed)
    predictor = None if result.predictor is None else calibrated_predictor(result.predictor, calibration)
    return replace(result, confidences=confidences, predictor=predictor)


def _as_images(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    tensor = torch.as_tensor(images)
    if tensor.dtype != torch.uint8:
        raise InvalidInput(f"images must be uint8 (got {tensor.dtype}); decode with core.data.images")
    if tensor.ndim == 3:
        tensor = tensor[:, None]
    if tensor.ndim != 4 or tensor.shape[1] not in (1, 3) or tensor.shape[2] != tensor.shape[3]:
        raise InvalidInput(f"images must be (N, C, S, S) with C in (1, 3), got {tuple(tensor.shape)}")
    if tensor.shape[0] == 0:
        raise InvalidInput("no images given; at least k images are needed")
    return tensor


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, C, S, S) to (N, C, size, size), antialiased."""
    resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from core import ClusterConfig, cluster
from core.calibration import DIMS, CalibratedReadout, calibrate, projected
from core.config import MMDCParams
from core.data import augment
from core.errors import InvalidInput
from core.methods.mmdc import clustering_epoch, lookahead_targets, rotation_epoch, sample_targets
from core.methods.mmdc_plan import SHORT_STEPS, make_plan
from core.metrics import accuracy
from core.pipeline import resize
from core.predictor import Predictor
from tests.core.conftest import mmdc_parts

FAST = {"method": "mmdc", "epochs": 10, "batch_size": 16}


def test_targets_are_one_hot_with_zero_sigma():
    targets, means = sample_targets(500, 4, MMDCParams(), torch.Generator().manual_seed(0))
    assert torch.equal(means, torch.eye(4))
    assert set(targets.sum(1).tolist()) == {1.0} and set(targets.max(1).values.tolist()) == {1.0}
    assert torch.bincount(targets.argmax(1), minlength=4).min() > 80  # multinomial(n, 1/k)


def test_targets_lie_on_the_sphere_with_sigma():
    targets, _ = sample_targets(100, 5, MMDCParams(sigma=0.3), torch.Generator().manual_seed(0))
    assert torch.allclose(targets.norm(dim=1), torch.ones(100))


def test_batch_reassignment_only_permutes_the_batch_targets():
    z = torch.nn.functional.normalize(torch.randn(16, 4), dim=1)
    targets = torch.eye(4)[torch.arange(16) % 4]
    original = targets.clone()
    plan = make_plan(ClusterConfig(k=4, method="mmdc"), n=16, channels=1, size=8)
    images = torch.zeros(16, 1, 8, 8, dtype=torch.uint8)
    assigned = lookahead_targets([torch.arange(16)], targets, images=images, plan=plan,
                                 cost=lambda view, batch_targets: torch.cdist(z, batch_targets))
    new = next(assigned)
    assert sorted(map(tuple, new.tolist())) == sorted(map(tuple, original.tolist()))
    cost = lambda t: torch.linalg.norm(z - t, dim=1).sum()  # noqa: E731
    assert cost(new) <= cost(original) + 1e-6
    assert torch.equal(targets, new)  # written back: the permuted targets persist


def test_the_next_batch_cost_is_under_way_before_this_batch_trains():
    targets = torch.eye(3)[torch.arange(6) % 3]
    plan = make_plan(ClusterConfig(k=3, method="mmdc"), n=6, channels=1, size=8)
    images = torch.arange(6, dtype=torch.uint8)[:, None, None, None].expand(6, 1, 8, 8).contiguous()
    batches = [torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])]
    costs: list[int] = []

    def cost(view: torch.Tensor, batch_targets: torch.Tensor) -> torch.Tensor:
        costs.append(len(costs))
        return torch.zeros(len(batch_targets), len(batch_targets))

    assigned = lookahead_targets(batches, targets, images=images, plan=plan, cost=cost)
    next(assigned)
    assert costs == [0, 1]  # batch 0's cost, then batch 1's, before batch 0 is handed out
    next(assigned)
    assert costs == [0, 1] and next(assigned, None) is None  # nothing after the last batch


def test_the_epoch_schedule_follows_the_reference_of_the_image_type():
    grey = make_plan(ClusterConfig(k=10, epochs=50), n=1000, channels=1, size=32)
    colour = make_plan(ClusterConfig(k=10, epochs=400), n=1000, channels=3, size=32)
    assert (grey.refine_epoch, grey.decay_epoch, grey.decay_gamma) == (20, 40, 0.1)  # MNIST
    assert (colour.refine_epoch, colour.decay_epoch, colour.decay_gamma) == (350, 300, 0.2)  # CIFAR-10
    given = MMDCParams(refine_start=0.5, lr_decay_at=0.9, lr_decay_gamma=0.3)
    chosen = make_plan(ClusterConfig(k=10, epochs=40, mmdc=given), n=1000, channels=3, size=32)
    assert (chosen.refine_epoch, chosen.decay_epoch, chosen.decay_gamma) == (20, 36, 0.3)


def test_a_short_grey_scale_plan_refines_late_and_keeps_its_learning_rate():
    short = make_plan(ClusterConfig(k=10, epochs=8), n=1797, channels=1, size=32)  # 8 x 52 steps
    assert short.epochs * math.ceil(1797 / short.batch_size) < SHORT_STEPS
    assert (short.refine_epoch, short.decay_epoch) == (6, 8)  # the decay's milestone is never reached
    for epochs, refine_epoch in [(1, 0), (2, 1), (3, 2)]:  # and refinement still comes, in the last epoch
        assert make_plan(ClusterConfig(k=10, epochs=epochs), n=1797, channels=1, size=32).refine_epoch == refine_epoch
    longer = make_plan(ClusterConfig(k=10, epochs=16), n=1797, channels=1, size=32)
    assert (longer.refine_epoch, longer.decay_epoch) == (6, 13)  # the reference's 40 % and 80 %
    colour = make_plan(ClusterConfig(k=10, epochs=8), n=1797, channels=3, size=32)
    assert (colour.refine_epoch, colour.decay_epoch) == (7, 6)  # CIFAR-10's shape at any length
    given = make_plan(ClusterConfig(k=10, epochs=8, mmdc=MMDCParams(refine_start=0.5)), n=1797, channels=1, size=32)
    assert given.refine_epoch == 4


def test_the_crops_follow_the_reference_of_the_image_type():
    grey = make_plan(ClusterConfig(k=10), n=1000, channels=1, size=32)
    colour = make_plan(ClusterConfig(k=10), n=1000, channels=3, size=32)
    assert [round(f * 28) for f in grey.crops] == [24, 20, 16]  # MNIST: of the 28-px original
    assert [round(f * 32) for f in colour.crops] == [20]  # CIFAR-10: one 20-px crop, also the centre view
    chosen = make_plan(ClusterConfig(k=10, mmdc=MMDCParams(crop_fractions=(0.5,))), n=1000, channels=3, size=32)
    assert chosen.crops == (0.5,)


def test_cluster_recovers_three_separable_classes(images):
    pixels, labels = images
    result = cluster(pixels, ClusterConfig(k=3, **FAST), labels=labels)
    assert result.labels.shape == (90,) and set(result.labels.tolist()) <= {0, 1, 2}
    assert accuracy(labels, result.labels) >= 0.95
    assert result.metrics["acc"] >= 0.95
    assert result.embeddings.shape == (90, 3) and result.centres.shape == (3, 3)
    # separated classes, (nearly) all right: calibrated confidence says so (it was ~0.5-0.6 raw)
    assert result.confidences.mean() >= 0.9 and result.metrics["ece"] <= 0.1
    assert len(result.history) == 10
    plan = make_plan(ClusterConfig(k=3, **FAST), n=90, channels=1, size=pixels.shape[-1])
    refined = [h for h in result.history if "refine_kept" in h]  # from the refinement epoch on
    assert [h["epoch"] for h in refined] == list(range(plan.refine_epoch + 1, 11)) and len(refined) >= 2
    assert all(0 < h["refine_smallest_share"] <= 1 / 3 for h in refined)
    assert refined[-1]["refine_kept"] >= 0.9  # converged: the k-means targets hardly move


def test_confidences_are_calibrated_on_the_backbone_features_not_the_embedding(images):
    # the k-d embedding is trained towards the run's own one-hot targets, so its clusters look
    # separated whatever their purity; the calibration's mixture looks at the backbone instead
    pixels, _ = images
    result = cluster(pixels, ClusterConfig(k=3, **FAST))
    space = result.calibration_space
    assert space is not None and space.shape == (90, DIMS) and space.dtype == np.float32
    assert result.predictor is not None and isinstance(result.predictor.readout, CalibratedReadout)
    base = result.predictor.readout.base
    labels, raw = Predictor(base, 32, 1, 3, "mmdc", result.predictor.precision)(resize(pixels, 32))
    assert np.array_equal(labels, result.labels)  # the one pass for both keeps the embedding's labels
    with torch.no_grad():
        features = base.net.backbone(augment.centre_crops(resize(pixels, 32), base.size, base.crop))
    # the lower principal axes of 90 striped images are near-degenerate: compare the first
    assert abs(np.corrcoef(space[:, 0], projected(features.numpy(), seed=0)[:, 0])[0, 1]) > 0.999
    expected, _ = calibrate(raw, space, result.labels, 3, seed=0)
    np.testing.assert_allclose(result.confidences, expected, atol=1e-6)


@pytest.mark.slow
def test_cluster_on_colour_images_with_resnet_and_rotation(colour_images):
    pixels, labels = colour_images
    config = ClusterConfig(k=3, method="mmdc", epochs=2, batch_size=20, backbone="resnet18")  # auto: VGG on a CPU
    result = cluster(pixels, config, labels=labels)
    assert result.labels.shape == (60,)
    assert np.isfinite(result.history[-1]["rotation_loss"])  # the rotation epoch ran


def test_cluster_is_deterministic_per_seed(images):
    pixels, _ = images
    config = ClusterConfig(k=3, method="mmdc", epochs=3, batch_size=16, seed=7)
    first, second = cluster(pixels, config), cluster(pixels, config)
    assert np.array_equal(first.labels, second.labels)
    assert np.array_equal(first.embeddings, second.embeddings)


class Interrupt(Exception):
    pass


def test_resume_from_checkpoint_gives_the_uninterrupted_labels(images, tmp_path: Path):
    pixels, _ = images
    config = ClusterConfig(k=3, method="mmdc", epochs=4, batch_size=16, seed=3)
    uninterrupted = cluster(pixels, config)

    def stop_after_two_epochs(progress):
        if progress.epoch == 2 and progress.stage != "setup":
            raise Interrupt

    checkpoint = tmp_path / "run.ckpt"
    with pytest.raises(Interrupt):
        cluster(pixels, config, checkpoint=checkpoint, on_progress=stop_after_two_epochs)
    resumed = cluster(pixels, config, checkpoint=checkpoint)
    assert resumed.resumed_from_epoch == 2
    assert np.array_equal(resumed.labels, uninterrupted.labels)
    assert np.allclose(resumed.embeddings, uninterrupted.embeddings)


def test_checkpoint_of_another_config_is_refused(images, tmp_path: Path):
    pixels, _ = images
    checkpoint = tmp_path / "run.ckpt"
    cluster(pixels, ClusterConfig(k=3, method="mmdc", epochs=1, batch_size=16), checkpoint=checkpoint)
    with pytest.raises(ValueError, match="different run"):
        cluster(pixels, ClusterConfig(k=4, method="mmdc", epochs=1, batch_size=16), checkpoint=checkpoint)


def test_kmeans_method_on_pixels(images):
    pixels, labels = images
    result = cluster(pixels, ClusterConfig(k=3, method="kmeans"), labels=labels)
    assert result.metrics["acc"] == 1.0 and result.centres.shape == (3, 32 * 32)


@pytest.mark.parametrize(
    ("config", "message"),
    [(ClusterConfig(k=100), "k=100 exceeds the 90 images"), (ClusterConfig(k=3, method="nope"), "method")],  # type: ignore[arg-type]
)
def test_bad_config_raises_value_error(images, config, message):
    with pytest.raises(ValueError, match=message):
        cluster(images[0], config)


def test_bad_images_raise_value_error():
    with pytest.raises(ValueError, match="uint8"):
        cluster(np.zeros((4, 1, 8, 8), dtype=np.float32), ClusterConfig(k=2))
    with pytest.raises(ValueError, match="no images"):
        cluster(np.zeros((0, 1, 8, 8), dtype=np.uint8), ClusterConfig(k=2))


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [(np.zeros((4, 1, 8, 8), dtype=np.float32), None, "uint8"),
     (np.zeros((4, 2, 8, 8), dtype=np.uint8), None, "C in"),
     (np.zeros((0, 1, 8, 8), dtype=np.uint8), None, "no images"),
     (np.zeros((4, 1, 8, 8), dtype=np.uint8), np.zeros(3), "one per image")],
)
def test_the_callers_bad_input_is_invalid_input(images, labels, message):
    with pytest.raises(InvalidInput, match=message):
        cluster(images, ClusterConfig(k=2, method="kmeans"), labels=labels)


def test_a_checkpoint_of_another_run_is_invalid_input(images, tmp_path: Path):
    checkpoint = tmp_path / "run.ckpt"
    cluster(images[0], ClusterConfig(k=3, method="mmdc", epochs=1, batch_size=16), checkpoint=checkpoint)
    with pytest.raises(InvalidInput, match="different run"):
        cluster(images[0][:60], ClusterConfig(k=3, method="mmdc", epochs=1, batch_size=16), checkpoint=checkpoint)


def test_image_size_override_resizes(images):
    result = cluster(images[0], ClusterConfig(k=3, method="kmeans", image_size=16))
    assert result.embeddings.shape == (90, 16 * 16)


def test_non_finite_loss_stops_the_epoch_with_a_clear_error(images):
    pixels, _ = images
    plan, state, steps, ctx = mmdc_parts(pixels, ClusterConfig(k=3, **FAST))
    with torch.no_grad():
        next(state.model.cluster_head.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="MMDC clustering loss became non-finite during epoch 1"):
        clustering_epoch(pixels, state, steps, plan, ctx, reassign=False)


def test_the_idle_head_still_takes_its_weight_decay_as_in_the_reference(colour_images):
    """The reference zero-fills gradients (torch 1.x zero_grad), so during a rotation epoch the
    clustering head, which gets no gradient, still shrinks by weight decay (and its momentum)."""
    plan, state, steps, ctx = mmdc_parts(colour_images[0], ClusterConfig(k=3, backbone="resnet18", **FAST))
    head = state.model.cluster_head.linear
    weight, bias = head.weight.detach().clone(), head.bias.detach().clone()
    rotation_epoch(colour_images[0], state, steps, plan, ctx)
    ratio = head.weight.detach() / weight
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), rtol=1e-4)  # only scaled
    assert 0.99 < float(ratio.flatten()[0]) < 1.0
    assert torch.equal(head.bias.detach(), bias)  # no decay on biases

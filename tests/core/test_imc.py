import numpy as np
import pytest
import torch
from PIL import Image

from core.calibration import DIMS, CalibratedReadout, calibrate, projected
from core.cli import main
from core.config import ClusterConfig, IMCParams
from core.methods.imc import IMCReadout, channel_stats, losses_of, unit_projection
from core.methods.imc_plan import default_prototypes, learning_rate, make_plan
from core.pipeline import cluster
from core.predictor import Predictor
from core.result import Progress
from tests.core.conftest import IMCRun, striped_images


def varied_stripes(per_class: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal stripes, vertical stripes and a disc with random period, phase, position and
    radius plus noise: harder than the fixed patterns, still separable after crops and jitter."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    images, labels = [], []
    for label in range(3):
        for _ in range(per_class):
            period, phase = rng.uniform(4, 7), rng.uniform(0, 7)
            if label == 0:
                base = np.sin(2 * np.pi * (yy + phase) / period) > 0
            elif label == 1:
                base = np.sin(2 * np.pi * (xx + phase) / period) > 0
            else:
                cy, cx = rng.uniform(0.35 * size, 0.65 * size, 2)
                base = (yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(0.2 * size, 0.35 * size) ** 2
            images.append(np.clip(0.8 * base + 0.1 + rng.normal(0, 0.08, base.shape), 0, 1)[None])
            labels.append(label)
    return (np.stack(images) * 255).astype(np.uint8), np.array(labels)


@pytest.fixture
def tiny_images() -> np.ndarray:
    """24 grey 16-px images in 3 classes: fast runs."""
    return striped_images(per_class=8, size=16)[0].numpy()


@pytest.fixture
def config() -> ClusterConfig:
    return ClusterConfig(k=3, method="imc", epochs=2, batch_size=12)


def test_default_prototypes_scale_with_the_upload():
    assert default_prototypes(60, 3) == 30
    assert default_prototypes(5_000, 10) == 500
    assert default_prototypes(70_000, 10) == 1000
    assert default_prototypes(2_000, 200) == 1000


def test_plan_scales_warmup_and_freeze_down_for_tiny_uploads():
    plan = make_plan(ClusterConfig(k=3, method="imc", epochs=30), n=60, channels=1, size=28)
    assert plan.batch_size == 60 and plan.steps_per_epoch == 1
    assert plan.warmup_iters == plan.freeze_iters == 3  # 10 % of 30 iterations
    big = make_plan(ClusterConfig(k=10, method="imc", epochs=50), n=60_000, channels=1, size=28)
    assert big.batch_size == 256 and big.steps_per_epoch == 234
    assert big.warmup_iters == big.freeze_iters == 500
    assert (big.high_size, big.low_size) == (24, 16)
    assert big.milestones == (15, 30, 40)


def test_plan_never_drops_every_batch():
    plan = make_plan(ClusterConfig(k=2, method="imc", epochs=1, batch_size=512), n=5, channels=3, size=32)
    assert plan.batch_size == 5 and plan.steps_per_epoch == 1


def test_learning_rate_warms_up_linearly_then_steps_down():
    params = IMCParams()
    plan = make_plan(ClusterConfig(k=10, method="imc", epochs=50), n=60_000, channels=3, size=28)
    assert learning_rate(params, plan, 0, 0) == pytest.approx(5e-4 / 500)
    assert learning_rate(params, plan, 249, 0) == pytest.approx(5e-4 / 2)
    assert learning_rate(params, plan, 10_000, 14) == pytest.approx(5e-4)
    assert learning_rate(params, plan, 10_000, 15) == pytest.approx(5e-4 * 0.4)
    assert learning_rate(params, plan, 10_000, 45) == pytest.approx(5e-4 * 0.4**3)


def test_the_learning_rate_follows_the_image_type_unless_given():
    grey = make_plan(ClusterConfig(k=10, method="imc"), n=1000, channels=1, size=32)
    colour = make_plan(ClusterConfig(k=10, method="imc"), n=1000, channels=3, size=32)
    given = make_plan(ClusterConfig(k=10, method="imc", imc=IMCParams(lr=1e-3)), n=1000, channels=1, size=32)
    assert (grey.lr, colour.lr, given.lr) == (2e-3, 5e-4, 1e-3)


def test_channel_stats_match_numpy(tiny_images):
    mean, std = channel_stats(torch.from_numpy(tiny_images))
    unit = tiny_images / 255.0
    np.testing.assert_allclose(mean.numpy(), unit.mean((0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(std.numpy(), unit.std((0, 2, 3)), rtol=1e-4)


def test_prototypes_stay_frozen_during_the_first_iterations(tiny_images, config):
    run = IMCRun(tiny_images, config.with_(epochs=30, batch_size=8))  # 3 steps/epoch: freeze 9
    assert run.plan.freeze_iters == 9
    run.state.model.prototypes.renormalise()
    before = run.state.model.prototypes.weight.detach().clone()
    run.train_epoch()
    torch.testing.assert_close(run.state.model.prototypes.weight.detach(), before)
    run.state.epoch += 1
    run.train_epoch()
    run.train_epoch()  # iterations 3..8 frozen too
    torch.testing.assert_close(run.state.model.prototypes.weight.detach(), before)
    run.train_epoch()  # iterations 9..11 update them
    assert not torch.allclose(run.state.model.prototypes.weight.detach(), before)


def test_classifier_gets_no_gradient_into_the_encoder(tiny_images, config):
    run = IMCRun(tiny_images, config)
    views = run.views.train(torch.from_numpy(tiny_images[:12]))
    losses = losses_of(run.state.model, views, config.imc, run.ctx.device, config.precision)
    run.state.model.zero_grad()
    (losses["mi_loss"] + losses["logit_penalty"]).backward()
    assert all(p.grad is None for p in run.state.model.encoder.parameters())
    assert any(p.grad is not None for p in run.state.model.classifier.parameters())


def test_non_finite_loss_raises_with_the_epoch(tiny_images, config):
    run = IMCRun(tiny_images, config)
    with torch.no_grad():
        next(run.state.model.classifier.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="IMC loss became non-finite during epoch 1"):
        run.train_epoch()


def test_cluster_imc_returns_labels_confidences_and_embeddings(tiny_images, config):
    result = cluster(tiny_images, config)
    n = tiny_images.shape[0]
    assert result.labels.shape == (n,) and result.labels.min() >= 0 and result.labels.max() < 3
    assert ((result.confidences >= 0) & (result.confidences <= 1)).all()  # P(cluster is right)
    assert result.embeddings.shape == (n, 256)  # the pooled small VGG for grey 16 px images
    assert result.centres.shape == (3, 256)
    assert len(result.history) == 2 and np.isfinite(result.history[-1]["loss"])


def test_imc_confidences_are_calibrated_on_the_unit_projection(tiny_images, config):
    # the encoder features hold sub-styles the classifier keeps together; the mixtures look at
    # the projection the prototypes score, which the run keeps for re-clustering
    result = cluster(tiny_images, config)
    space = result.calibration_space
    n = tiny_images.shape[0]
    assert space is not None and space.shape == (n, min(DIMS, n)) and space.dtype == np.float32
    assert result.predictor is not None and isinstance(result.predictor.readout, CalibratedReadout)
    base = result.predictor.readout.base
    assert isinstance(base, IMCReadout)
    raw = Predictor(base, 16, 1, 3, "imc", result.predictor.precision)(torch.from_numpy(tiny_images))[1]
    unit = unit_projection(base.net, torch.from_numpy(result.embeddings))  # of the features the run read out
    assert unit.shape == (n, config.imc.project_dim)
    assert torch.linalg.vector_norm(unit, dim=1) == pytest.approx(torch.ones(n), abs=1e-5)
    np.testing.assert_allclose(space, projected(unit.numpy(), seed=0), atol=1e-5)
    expected, _ = calibrate(raw, space, result.labels, 3, seed=0)
    np.testing.assert_allclose(result.confidences, expected, atol=1e-6)


@pytest.mark.slow
def test_cluster_imc_runs_the_resnet_encoder_on_colour_images():
    colour = striped_images(per_class=3, size=16, colour=True)[0]
    result = cluster(colour, ClusterConfig(k=3, method="imc", epochs=1, batch_size=9, backbone="resnet18"))
    assert result.embeddings.shape == (9, 512)


def test_cluster_imc_is_deterministic_per_seed(tiny_images, config):
    first, second = cluster(tiny_images, config), cluster(tiny_images, config)
    np.testing.assert_array_equal(first.labels, second.labels)
    np.testing.assert_array_equal(first.embeddings, second.embeddings)
    other = cluster(tiny_images, config.with_(seed=1))
    assert not np.array_equal(first.embeddings, other.embeddings)


def test_cluster_imc_checkpoint_does_not_change_the_run(tiny_images, config, tmp_path):
    plain = cluster(tiny_images, config)
    saved = cluster(tiny_images, config, checkpoint=tmp_path / "run.pt")
    assert (tmp_path / "run.pt").exists()
    np.testing.assert_array_equal(plain.labels, saved.labels)
    np.testing.assert_array_equal(plain.embeddings, saved.embeddings)


def test_cluster_imc_resumes_an_interrupted_run_identically(tiny_images, tmp_path):
    config = ClusterConfig(k=3, method="imc", epochs=3, batch_size=12)
    uninterrupted = cluster(tiny_images, config, checkpoint=tmp_path / "full.pt")

    def stop_after_first_epoch(progress: Progress) -> None:
        if progress.stage == "clustering" and progress.epoch == 1:
            raise KeyboardInterrupt("cancelled")

    with pytest.raises(KeyboardInterrupt):
        cluster(tiny_images, config, checkpoint=tmp_path / "cut.pt", on_progress=stop_after_first_epoch)
    resumed = cluster(tiny_images, config, checkpoint=tmp_path / "cut.pt")
    assert resumed.resumed_from_epoch == 1
    np.testing.assert_array_equal(uninterrupted.labels, resumed.labels)
    np.testing.assert_array_equal(uninterrupted.embeddings, resumed.embeddings)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in uninterrupted.history]


@pytest.mark.slow
def test_cluster_imc_recovers_three_separable_classes():
    images, labels = varied_stripes(per_class=30, size=24, seed=2)
    # 5 steps per epoch and a higher rate than the reference: 8 short epochs are enough
    config = ClusterConfig(k=3, method="imc", epochs=8, batch_size=16, imc=IMCParams(lr=1e-3))
    result = cluster(images, config, labels=labels)
    assert result.metrics is not None and result.metrics["acc"] >= 0.95


def test_cli_clusters_a_folder_with_imc(tmp_path, capsys):
    pixels, _ = striped_images(per_class=4, size=16)
    for i, array in enumerate(pixels.numpy()):
        Image.fromarray(array[0]).save(tmp_path / f"{i}.png")
    assert main(["cluster", str(tmp_path), "--k", "3", "--method", "imc", "--epochs", "2"]) == 0
    assert "epoch 2/2" in capsys.readouterr().err


def test_grey_sets_get_whole_stroke_crops_without_flips_and_colour_sets_the_reference_augmentation():
    grey = make_plan(ClusterConfig(k=10, method="imc"), n=1000, channels=1, size=32)
    colour = make_plan(ClusterConfig(k=10, method="imc"), n=1000, channels=3, size=32)
    assert (grey.high_scale, grey.low_scale, grey.flip) == ((0.4, 1.0), (0.2, 0.6), False)
    assert (colour.high_scale, colour.low_scale, colour.flip) == ((0.2, 1.0), (0.08, 0.4), True)
    chosen = ClusterConfig(k=10, method="imc", imc=IMCParams(high_scale=(0.5, 1.0), flip=True))
    assert make_plan(chosen, n=1000, channels=1, size=32).high_scale == (0.5, 1.0)
    assert make_plan(chosen, n=1000, channels=1, size=32).flip is True


def test_the_resnet_encoder_starts_from_the_reference_fan_out_init():
    from core.methods.imc import build_encoder

    encoder, _ = build_encoder("resnet18", 3, 32)
    stem = encoder.conv1.weight  # (64, 3, 3, 3): fan_out = 64 * 9
    assert abs(float(stem.detach().std()) - (2 / (64 * 9)) ** 0.5) < 0.01

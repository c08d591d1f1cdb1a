import math

import torch

from core.data import augment


def batch(channels: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (8, channels, 32, 32), dtype=torch.uint8)


def test_random_crops_keep_shape_and_range():
    x = augment.random_crops(batch(), 32, torch.Generator().manual_seed(0),
                             crop_fractions=(0.75, 0.5), flip=True, max_degrees=25)
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def test_full_centre_crop_is_identity():
    raw = batch(1)
    assert torch.allclose(augment.centre_crops(raw, 32, 1.0), raw.float() / 255)


def test_warp_flip_mirrors_the_image():
    raw = batch(1)
    ones, zeros = torch.ones(8), torch.zeros(8)
    flipped = augment.warp(raw, 32, scale_x=ones, scale_y=ones, centre_x=zeros, centre_y=zeros,
                           flip=torch.ones(8, dtype=torch.bool))
    assert torch.allclose(flipped, raw.float().flip(-1) / 255, atol=1e-5)


def test_warp_quarter_turn_matches_rot90():
    raw = batch(1)
    ones, zeros = torch.ones(8), torch.zeros(8)
    turned = augment.warp(raw, 32, scale_x=ones, scale_y=ones, centre_x=zeros, centre_y=zeros,
                          angle=torch.full((8,), math.pi / 2))
    expected = torch.rot90(raw.float() / 255, 1, dims=(2, 3))
    matches = [torch.allclose(turned, e, atol=1e-4) for e in (expected, expected.flip(-1).flip(-2))]
    assert any(matches)


def test_color_jitter_keeps_range_and_changes_pixels():
    x = batch().float() / 255
    jittered = augment.color_jitter(x, torch.Generator().manual_seed(0))
    assert jittered.shape == x.shape and float(jittered.min()) >= 0 and float(jittered.max()) <= 1
    assert not torch.allclose(jittered, x)


def test_grayscale_makes_channels_equal():
    x = augment.random_grayscale(batch().float() / 255, torch.Generator().manual_seed(0), p=1.0)
    assert torch.allclose(x[:, 0], x[:, 1]) and torch.allclose(x[:, 1], x[:, 2])


def test_rotations_give_four_views_and_labels():
    views, labels = augment.rotations(batch())
    assert views.shape == (32, 3, 32, 32)
    assert labels.tolist() == [0] * 8 + [1] * 8 + [2] * 8 + [3] * 8


def test_random_resized_crops_shape():
    x = augment.random_resized_crops(batch(), 18, torch.Generator().manual_seed(0), scale=(0.08, 0.4))
    assert x.shape == (8, 3, 18, 18)


def test_augment_is_reproducible_per_generator():
    raw = batch()
    a = augment.random_crops(raw, 32, torch.Generator().manual_seed(5), crop_fractions=(0.6,), flip=True)
    b = augment.random_crops(raw, 32, torch.Generator().manual_seed(5), crop_fractions=(0.6,), flip=True)
    assert torch.equal(a, b)

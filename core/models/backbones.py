"""Backbones for small images: torchvision's ResNet-18 with a 3x3 stride-1 stem, and MMDC's small VGG.

Both return pooled/flattened features (B, feature_dim).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

from core.errors import InvalidInput

StemPool = Literal["none", "mmdc"]
ConvInit = Literal["fan_in", "fan_out"]


def small_resnet18(in_channels: int, stem_pool: StemPool = "none", conv_init: ConvInit = "fan_in") -> nn.Module:
    """ResNet-18 for 32-64 px inputs (algorithms.md §1.2, §2.2); 512-d output.

    stem_pool="mmdc" adds MMDC's MaxPool(2, stride 2, padding 1) after the stem, which makes the
    network 2.6x cheaper at 32 px; "none" is the CIFAR variant IMC-SwAV uses. conv_init: the
    Kaiming-normal mode of each reference, fan_in for MMDC and fan_out (torchvision's) for
    IMC-SwAV. BN follows every conv, so it does not change the forward pass, but under Adam it
    sets how fast a layer moves relative to its size: fan_in makes the stem 4.6x larger.
    """
    net = resnet18(weights=None)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.MaxPool2d(2, 2, padding=1) if stem_pool == "mmdc" else nn.Identity()
    net.fc = nn.Identity()
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode=conv_init, nonlinearity="relu")
    net.feature_dim = 512  # type: ignore[assignment]
    return net


class SmallVGG(nn.Module):
    """MMDC's `small_vgg` for MNIST-like images: four conv-BN-ReLU-pool blocks, flattened.

    The reference hard-codes 32 px (256*2*2 = 1024 features); here the flatten size follows
    the input size.
    """

    def __init__(self, in_channels: int, image_size: int, widths: tuple[int, ...] = (32, 64, 128, 256)):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for width in widths:
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        side = image_size // 2 ** len(widths)
        if side < 1:
            raise InvalidInput(f"image_size={image_size} is too small for the small VGG; use >= 16")
        self.feature_dim = channels * side * side
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)  # (B, feature_dim)


class Upsampled(nn.Module):
    """A backbone that first resizes its input up to `size` px (bilinear), for a network whose
    input size is fixed by its recipe; `feature_dim` is the backbone's at that size."""

    def __init__(self, backbone: nn.Module, size: int):
        super().__init__()
        self.backbone, self.size = backbone, size
        self.feature_dim: int = backbone.feature_dim  # type: ignore[assignment]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] < self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.backbone(x)  # type: ignore[no-any-return]


def choose_backbone(requested: str, channels: int, image_size: int, *, cpu: bool = False) -> str:
    """The small VGG for images up to 32 px that are grey-scale (MNIST-like) or trained on a CPU,
    ResNet-18 otherwise.

    On a CPU one ResNet-18 epoch of 5,000 CIFAR-10 images took longer (about 880 s) than a 600 s
    budget, in which the VGG trained 50 IMC-SwAV epochs to ACC 0.29 against k-means' 0.21
    (bench/RESULTS.md, "Round 9").
    """
    if requested != "auto":
        return requested
    return "vgg" if image_size <= 32 and (channels == 1 or cpu) else "resnet18"


def build_backbone(name: str, channels: int, image_size: int, stem_pool: StemPool) -> nn.Module:
    if name == "vgg":
        return SmallVGG(channels, image_size)
    if name == "resnet18":
        return small_resnet18(channels, stem_pool)
    raise InvalidInput(f"backbone={name!r} is unknown; use auto, resnet18 or vgg")

"""Benchmark sets from their published files (see ../shared/datasets/README.md)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

IDX_SETS = {"mnist": "mnist", "fashion-mnist": "fashion-mnist"}


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(name: str, root: Path, split: str = "all", *, native: bool = False) -> tuple[torch.Tensor, np.ndarray]:
    """uint8 images (N, C, 32, 32) and labels; split: all (train+test union), train or test.
    native: MNIST-like sets at their own 28 px, as an upload of them is decoded."""
    if name in IDX_SETS:
        folder = root / IDX_SETS[name]
        parts = {"train": "train", "test": "t10k"}
        chosen = ["train", "test"] if split == "all" else [split]
        images = np.concatenate([read_idx(folder / f"{parts[s]}-images-idx3-ubyte.gz") for s in chosen])
        labels = np.concatenate([read_idx(folder / f"{parts[s]}-labels-idx1-ubyte.gz") for s in chosen])
        if native:  # core.data.images.auto_image_size keeps 28 px
            return torch.from_numpy(images.copy())[:, None], labels.astype(np.int64)
        # 28 -> 32 px, the reference MMDC input size (uploads of 28 px images stay 28 px)
        tensor = F.interpolate(torch.from_numpy(images)[:, None].float(), size=(32, 32), mode="bilinear",
                               antialias=True, align_corners=False).round().clamp(0, 255).to(torch.uint8)
        return tensor, labels.astype(np.int64)
    if name == "cifar10":
        folder = root / "cifar-10"
        shards = {"train": [f"train-0{i}.npz" for i in range(5)], "test": ["test.npz"]}
        files = shards["train"] + shards["test"] if split == "all" else shards[split]
        loaded = [np.load(folder / f) for f in files if (folder / f).exists()]
        images = np.concatenate([d["images"] for d in loaded]).transpose(0, 3, 1, 2).copy()
        labels = np.concatenate([d["labels"] for d in loaded]).astype(np.int64)
        return torch.from_numpy(images), labels
    raise ValueError(f"unknown dataset {name!r}; use mnist, fashion-mnist or cifar10")

"""Apply a finished clustering to new images without retraining.

A `Predictor` is the trained read-out of one run (an nn.Module: uint8 (N, C, S, S) -> labels,
confidences, exactly the mapping that labelled the run's own images) plus the working size and
channels its inputs must be decoded to. `save_model` writes it with torch.save as a full pickle,
so `load_model` must only be given files this library wrote (the service keeps them in its own
data folder). `python -m core.predict MODEL FILE...` prints one JSON object: what the service's
API runs, so the API process itself never imports torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from core.atomic import write_atomically
from core.data.images import decode_files
from core.runtime import autocast

if TYPE_CHECKING:
    from core.result import ClusterResult

FORMAT = 1  # bumped when the saved layout changes


@dataclass
class Predictor:
    readout: nn.Module  # uint8 (N, C, S, S) -> ((N,) int64 labels, (N,) float confidences)
    image_size: int  # S: the run's working size
    channels: int  # C: 1 (grey) or 3 (RGB)
    k: int
    method: str
    precision: str = "fp32"  # the autocast the run labelled its images in, so labels reproduce

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Labels (N,) and confidences (N,) of uint8 images already at (C, S, S)."""
        expected = (self.channels, self.image_size, self.image_size)
        if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"images must be uint8 (N, {', '.join(map(str, expected))}), got "
                             f"{images.dtype} {tuple(images.shape)}; decode them with predict_files")
        self.readout.eval()
        device = next(iter(self.readout.state_dict().values())).device
        labels, confidences = [], []
        for part in images.split(batch_size):
            with autocast(device, self.precision):
                label, confidence = self.readout(part.to(device))
            labels.append(label.cpu())
            confidences.append(confidence.float().cpu())
        return torch.cat(labels).numpy().astype(np.int64), torch.cat(confidences).numpy()


def save_model(source: ClusterResult | Predictor, path: str | Path) -> None:
    """Write the predictor of a result (or a predictor) to `path`, atomically."""
    predictor = source if isinstance(source, Predictor) else source.predictor
    if predictor is None:
        raise ValueError("this result has no predictor; it was made by a method that cannot predict")
    path = Path(path)
    saved = {"format": FORMAT, "readout": predictor.readout, "image_size": predictor.image_size,
             "channels": predictor.channels, "k": predictor.k, "method": predictor.method,
             "precision": predictor.precision}
    write_atomically(path, lambda handle: torch.save(saved, handle))


def load_model(path: str | Path, device: str | torch.device = "cpu") -> Predictor:
    """Read a file written by save_model (a trusted pickle) onto `device`."""
    saved: dict[str, Any] = torch.load(path, map_location=device, weights_only=False)
    if saved.get("format") != FORMAT:
        raise ValueError(f"{path} is not a Corral model of format {FORMAT}")
    return Predictor(saved["readout"], saved["image_size"], saved["channels"], saved["k"], saved["method"],
                     saved.get("precision", "fp32"))


def predict_files(
    predictor: Predictor, files: Sequence[tuple[str, Path]]
) -> tuple[list[str], np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Decode files to the model's size and channels and predict: (names, labels, confidences,
    skipped (name, reason)); names come back sorted, as decode_files orders them."""
    decoded = decode_files(files, image_size=predictor.image_size, channels=predictor.channels)
    if not decoded.paths:
        return [], np.zeros(0, np.int64), np.zeros(0, np.float32), decoded.skipped
    labels, confidences = predictor(decoded.images)
    return decoded.paths, labels, confidences, decoded.skipped


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.predict", description=__doc__)
    parser.add_argument("model", type=Path)
    parser.add_argument("files", nargs="+", type=Path, help="image files (named by their path)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a few images: start-up dominates, and the API host has other work
    pairs = [(str(file), file) for file in args.files]
    try:
        predictor = load_model(args.model)
        names, labels, confidences, skipped = predict_files(predictor, pairs)
    except (ValueError, OSError) as error:
        print(json.dumps({"error": str(error)}))
        return 2
    print(json.dumps({
        "k": predictor.k, "method": predictor.method,
        "predictions": [{"name": n, "cluster": int(c), "confidence": float(p)}
                        for n, c, p in zip(names, labels, confidences, strict=True)],
        "skipped": [{"name": n, "reason": r} for n, r in skipped],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())

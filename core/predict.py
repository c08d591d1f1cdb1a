"""Apply a finished clustering to new images without retraining.

A `Predictor` (core/predictor.py) is the trained read-out of one run. `save_model` writes it
with torch.save as a full pickle, so `load_model` must only be given files this library wrote
(the service keeps them in its own data folder). `python -m core.predict MODEL FILE...` prints
one JSON object: what the service's API runs, so the API process itself never imports torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from core.data.images import decode_files
from core.errors import InvalidInput
from core.predictor import Predictor

if TYPE_CHECKING:
    from core.result import ClusterResult

FORMAT = 1  # bumped when the saved layout changes


def save_model(source: ClusterResult | Predictor, path: str | Path) -> None:
    """Write the predictor of a result (or a predictor) to `path`, atomically."""
    predictor = source if isinstance(source, Predictor) else source.predictor
    if predictor is None:
        raise InvalidInput("this result has no predictor; it was made by a method that cannot predict")
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    torch.save({"format": FORMAT, "readout": predictor.readout, "image_size": predictor.image_size,
                "channels": predictor.channels, "k": predictor.k, "method": predictor.method,
                "precision": predictor.precision}, partial)
    partial.replace(path)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> Predictor:
    """Read a file written by save_model (a trusted pickle) onto `device`."""
    saved: dict[str, Any] = torch.load(path, map_location=device, weights_only=False)
    if saved.get("format") != FORMAT:
        raise InvalidInput(f"{path} is not a Corral model of format {FORMAT}")
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

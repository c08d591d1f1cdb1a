"""What the web pages show, computed from a job's rows and files (numpy only, no torch).

Templates get plain values; Jinja2's autoescaping escapes every name on the way out.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from store import results

PALETTE = (  # Okabe-Ito and Tableau hues; cluster c gets PALETTE[c % len]
    "#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000",
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#9c755f",
)
SHOWN = 40  # most confident thumbnails per cluster
LEAST = 8  # least confident thumbnails per cluster, marked
MAP_POINTS = 3000  # most points drawn on the embedding map
MAP_SIDE = 480  # px


@dataclass(frozen=True)
class Thumb:
    image_id: uuid.UUID
    path: str
    confidence: float
    least: bool  # among the cluster's least confident


@dataclass(frozen=True)
class ClusterView:
    id: int
    colour: str
    size: int
    mean_confidence: float
    best: list[Thumb]  # highest confidence first
    least: list[Thumb]  # the least confident, when not all fit in `best`


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    colour: str
    cluster: int


@dataclass(frozen=True)
class Confusion:
    classes: list[str]  # the archive's top folders (rows)
    clusters: list[int]  # columns
    counts: list[list[int]]


def colour(cluster: int) -> str:
    return PALETTE[cluster % len(PALETTE)]


def cluster_views(rows: Sequence[results.AssignmentRow], k: int) -> list[ClusterView]:
    """One section per cluster: the most confident images, then the least confident, marked."""
    members: list[list[results.AssignmentRow]] = [[] for _ in range(k)]
    for row in rows:
        members[row.cluster].append(row)
    views = []
    for cluster, group in enumerate(members):
        group.sort(key=lambda row: (-row.confidence, row.seq))
        n_least = min(LEAST, max(1, len(group) // 10)) if len(group) >= 3 else 0
        cut = len(group) - n_least
        thumbs = [Thumb(r.image_id, r.path, r.confidence, i >= cut) for i, r in enumerate(group)]
        fits = len(group) <= SHOWN + LEAST
        views.append(
            ClusterView(
                id=cluster,
                colour=colour(cluster),
                size=len(group),
                mean_confidence=float(np.mean([r.confidence for r in group])) if group else 0.0,
                best=thumbs if fits else thumbs[:SHOWN],
                least=[] if fits else thumbs[cut:],
            )
        )
    return views


def top_components(x: np.ndarray, n: int = 2, iterations: int = 30) -> np.ndarray:
    """The first `n` principal axes (d, n) by subspace iteration: no d x d matrix, no full SVD."""
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.standard_normal((x.shape[1], n)))
    for _ in range(iterations):
        basis, _ = np.linalg.qr(x.T @ (x @ basis))
    return basis


def embedding_map(embeddings_file: Path, labels: np.ndarray) -> list[Point]:
    """A 2-D PCA projection of (a regular sample of) the embeddings, scaled to the map."""
    if not embeddings_file.is_file():
        return []
    embeddings = np.load(embeddings_file, mmap_mode="r")
    if embeddings.shape[0] != labels.shape[0] or embeddings.shape[0] < 2:
        return []
    pick = np.linspace(0, embeddings.shape[0] - 1, min(MAP_POINTS, embeddings.shape[0])).round().astype(int)
    x = np.asarray(embeddings[pick], dtype=np.float64)
    x -= x.mean(0)
    xy = x @ top_components(x, min(2, x.shape[1]))
    if xy.shape[1] < 2:
        xy = np.column_stack([xy[:, 0], np.zeros(len(xy))])
    low, high = xy.min(0), xy.max(0)
    xy = (xy - low) / np.where(high > low, high - low, 1.0) * (MAP_SIDE - 20) + 10
    return [
        Point(float(px), float(MAP_SIDE - py), colour(int(c)), int(c))
        for (px, py), c in zip(xy, labels[pick], strict=True)
    ]


def confusion(rows: Sequence[results.AssignmentRow], k: int) -> Confusion | None:
    """Class folders x clusters, when every image sits under one of >= 2 top-level folders
    (the rule the worker scores ACC/NMI/ARI by)."""
    tops = [PurePosixPath(r.path).parts[0] if len(PurePosixPath(r.path).parts) > 1 else None for r in rows]
    if not tops or None in tops or len(set(tops)) < 2:
        return None
    classes = sorted({t for t in tops if t is not None})
    index = {name: i for i, name in enumerate(classes)}
    counts = np.zeros((len(classes), k), dtype=int)
    for top, row in zip(tops, rows, strict=True):
        counts[index[str(top)], row.cluster] += 1
    return Confusion(classes, list(range(k)), counts.tolist())


PLOT_WIDTH, PLOT_HEIGHT, PLOT_PAD = 480, 200, 32  # px: the k-choice plot


@dataclass(frozen=True)
class KScorePoint:
    k: int
    score: float
    x: float
    y: float
    chosen: bool


@dataclass(frozen=True)
class KChoicePlot:
    """The criterion against k for an auto-k job: a polyline and a point per k tried."""

    criterion: str
    k: int
    k_max: int
    note: str | None  # why k is not the highest-scoring k, where it is not
    points: list[KScorePoint]
    line: str  # SVG polyline points
    width: int
    height: int
    pad: int
    low: float  # the score range on the y axis
    high: float


def k_choice_plot(selection: dict[str, Any] | None) -> KChoicePlot | None:
    """Plot data for `Job.k_selection` (core's KChoice.to_dict()); None without one."""
    if not selection or not isinstance(selection.get("scores"), list) or not selection["scores"]:
        return None
    # a k that could not be scored is stored as null (core.kselect._json_float): drawn at the floor
    scores = sorted((int(s["k"]), math.nan if s["score"] is None else float(s["score"])) for s in selection["scores"])
    ks = [k for k, _ in scores]
    values = [v for _, v in scores if np.isfinite(v)] or [0.0]
    low, high = min(values), max(values)
    span_k, span_v = max(1, ks[-1] - ks[0]), (high - low) or 1.0
    inner_w, inner_h = PLOT_WIDTH - 2 * PLOT_PAD, PLOT_HEIGHT - 2 * PLOT_PAD
    chosen = int(selection.get("k", -1))
    points = []
    for k, value in scores:
        shown = value if np.isfinite(value) else low
        x = PLOT_PAD + (k - ks[0]) / span_k * inner_w if len(ks) > 1 else PLOT_WIDTH / 2
        y = PLOT_PAD + (high - shown) / span_v * inner_h
        points.append(KScorePoint(k, value, round(x, 1), round(y, 1), k == chosen))
    return KChoicePlot(
        criterion=str(selection.get("criterion", "")),
        k=chosen,
        k_max=int(selection.get("k_max", ks[-1])),
        note=None if selection.get("note") is None else str(selection["note"]),
        points=points,
        line=" ".join(f"{p.x},{p.y}" for p in points),
        width=PLOT_WIDTH,
        height=PLOT_HEIGHT,
        pad=PLOT_PAD,
        low=low,
        high=high,
    )

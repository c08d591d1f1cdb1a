import uuid
from pathlib import Path

import numpy as np

from api import pages
from store.results import AssignmentRow


def rows(clusters: list[int], paths: list[str] | None = None) -> list[AssignmentRow]:
    paths = paths or [f"img{i}.png" for i in range(len(clusters))]
    return [
        AssignmentRow(i, uuid.uuid4(), path, c, 1.0 - i / 1000)
        for i, (c, path) in enumerate(zip(clusters, paths, strict=True))
    ]


def test_cluster_views_put_the_most_confident_first_and_mark_the_least() -> None:
    views = pages.cluster_views(rows([0] * 100 + [1] * 5), k=3)
    big, small, empty = views
    assert big.size == 100 and len(big.best) == pages.SHOWN and len(big.least) == pages.LEAST
    confidences = [t.confidence for t in big.best + big.least]
    assert confidences == sorted(confidences, reverse=True)
    assert all(t.least for t in big.least) and not any(t.least for t in big.best)
    assert small.size == 5 and not small.least and [t.least for t in small.best] == [False] * 4 + [True]
    assert empty.size == 0 and empty.best == []


def test_embedding_map_follows_the_first_principal_axis(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    t = np.linspace(-1, 1, 200)
    direction = rng.standard_normal(50)
    x = (t[:, None] * direction * 10 + rng.standard_normal((200, 50)) * 0.1).astype(np.float32)
    np.save(tmp_path / "e.npy", x)
    points = pages.embedding_map(tmp_path / "e.npy", (t > 0).astype(np.int64))
    assert len(points) == 200 and all(0 <= p.x <= pages.MAP_SIDE and 0 <= p.y <= pages.MAP_SIDE for p in points)
    xs = np.array([p.x for p in points])
    assert abs(np.corrcoef(xs, t)[0, 1]) > 0.99  # the map's horizontal axis is the line
    assert pages.embedding_map(tmp_path / "missing.npy", np.zeros(200, np.int64)) == []


def test_confusion_counts_class_folders_against_clusters_only_with_folders() -> None:
    table = pages.confusion(rows([0, 0, 1, 1], ["a/1.png", "a/2.png", "b/1.png", "a/3.png"]), k=2)
    assert table is not None and table.classes == ["a", "b"] and table.counts == [[2, 1], [0, 1]]
    assert pages.confusion(rows([0, 1], ["a/1.png", "2.png"]), k=2) is None


def test_k_choice_plot_and_schema_take_a_k_that_could_not_be_scored() -> None:
    from api.schemas import KSelection

    selection = {"k": 3, "criterion": "silhouette of classifier heads", "k_max": 4,
                 "scores": [{"k": 2, "score": 0.2}, {"k": 3, "score": 0.5}, {"k": 4, "score": None}]}
    plot = pages.k_choice_plot(selection)
    assert plot is not None and (plot.low, plot.high) == (0.2, 0.5)
    assert [point.chosen for point in plot.points] == [False, True, False]
    assert plot.points[2].y == plot.points[0].y  # unscored: drawn at the floor, as -inf scores are
    assert KSelection.model_validate(selection).scores[2].score is None

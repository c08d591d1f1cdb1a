"""Corral's deep-clustering library. `core.cluster(...)` is the one entry point.

Attributes are imported lazily so that `core.config` stays importable without torch.
"""

from typing import Any

__all__ = ["ClusterConfig", "ClusterResult", "Progress", "cluster"]


def __getattr__(name: str) -> Any:
    if name == "cluster":
        from core.pipeline import cluster

        return cluster
    if name in ("ClusterResult", "Progress"):
        from core import result

        return getattr(result, name)
    if name == "ClusterConfig":
        from core.config import ClusterConfig

        return ClusterConfig
    raise AttributeError(name)

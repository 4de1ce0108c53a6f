"""The neighbour index a map is built on: PCA state, reduced training points and their kNN graph.

Computed once per image set and stored as plain ``.npy`` files plus an
``index.json`` written last (so a folder without it is an unfinished build), it
lets later maps skip PCA and the kNN search, and lets ``transform`` /
``kneighbors`` / ``inverse_transform`` work after reloading without pickles.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ScopeError
from ..fileio import load_npy, read_json, write_json, write_npy
from .neighbors import check_metric, describe_graph_step, knn_graph
from .reduce import DEFAULT_MEMORY_LIMIT, PCAState, fit_pca, flat, pca_size

INDEX_FILE = "index.json"
ARRAYS = ("reduced", "knn_indices", "knn_distances")
INDEX_FORMAT = 1


@dataclass
class NeighbourIndex:
    """Reduced training points (N x d) and their kNN graph (N x k, self first)."""

    reduced: np.ndarray
    knn_indices: np.ndarray
    knn_distances: np.ndarray
    metric: str
    pca: PCAState | None = None
    method: str = "exact"
    seconds: dict = field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        return int(self.reduced.shape[0])

    @property
    def k(self) -> int:
        return int(self.knn_indices.shape[1])

    def reduce(self, latents: np.ndarray, progress: bool = False) -> np.ndarray:
        """Latents (N x ... or one latent) in the space the graph lives in, float32 N x d."""
        data = flat(np.asarray(latents))
        expected = self.pca.mean.shape[0] if self.pca is not None else self.reduced.shape[1]
        if data.shape[1] != expected:
            raise ValueError(f"latents have {data.shape[1]} values each; this map was fitted on {expected}")
        if self.pca is None:
            return np.ascontiguousarray(data, dtype=np.float32)
        return self.pca.transform(data, progress)

    @classmethod
    def build(cls, latents: np.ndarray, n_neighbors: int, metric: str = "euclidean", pca_components: int | None = 50,
              random_state: int | None = 0, memory_limit: int = DEFAULT_MEMORY_LIMIT, progress: bool = False,
              step=None) -> "NeighbourIndex":
        """Reduce ``latents`` with PCA (when that shrinks them) and compute their kNN graph."""
        check_metric(metric)
        step = step or (lambda label: None)
        data = flat(latents)
        seconds = {}
        started = time.perf_counter()
        size = pca_size(len(data), data.shape[1], pca_components)
        pca = None
        if size is not None:
            step(f"reducing with PCA ({data.shape[1]} -> {size} dims)")
            pca, reduced = fit_pca(data, size, random_state, memory_limit, progress)
        else:
            reduced = np.ascontiguousarray(data, dtype=np.float32)
        seconds["reduce"] = round(time.perf_counter() - started, 3)
        started = time.perf_counter()
        step(describe_graph_step(len(reduced)))
        indices, distances, method = knn_graph(reduced, n_neighbors, metric, random_state, progress=progress)
        seconds["neighbours"] = round(time.perf_counter() - started, 3)
        return cls(reduced, indices, distances, metric, pca, method, seconds)

    # ------------------------------------------------------------------ storage

    def describe(self) -> dict:
        info = {
            "format": INDEX_FORMAT,
            "metric": self.metric,
            "n_samples": self.n_samples,
            "k": self.k,
            "dims": int(self.reduced.shape[1]),
            "method": self.method,
            "seconds": self.seconds,
            "pca_components": self.pca.n_components if self.pca is not None else None,
        }
        if self.pca is not None:
            info["pca_explained_variance"] = round(float(self.pca.explained_variance_ratio.sum()), 5)
        return info

    def save(self, folder: str | Path, **extra) -> None:
        folder = Path(folder)
        (folder / INDEX_FILE).unlink(missing_ok=True)  # the folder is incomplete until index.json is back
        for name in ARRAYS:
            write_npy(folder / f"{name}.npy", getattr(self, name))
        if self.pca is not None:
            self.pca.save(folder)
        write_json(folder / INDEX_FILE, {**self.describe(), **extra})

    @classmethod
    def load(cls, folder: str | Path) -> tuple["NeighbourIndex", dict]:
        folder = Path(folder)
        try:
            info = read_json(folder / INDEX_FILE)
            arrays = {name: load_npy(folder / f"{name}.npy") for name in ARRAYS}
            pca = PCAState.load(folder) if info.get("pca_components") else None
        except (OSError, ValueError) as exc:
            raise ScopeError(f"{folder}: unreadable neighbour index ({exc}); rerun 'latentscope project' to rebuild it") from None
        if info.get("format") != INDEX_FORMAT or arrays["knn_indices"].shape != arrays["knn_distances"].shape \
                or len(arrays["reduced"]) != len(arrays["knn_indices"]):
            raise ScopeError(f"{folder}: inconsistent neighbour index; rerun 'latentscope project' to rebuild it")
        return cls(metric=info["metric"], pca=pca, method=info.get("method", "?"), seconds=info.get("seconds", {}), **arrays), info


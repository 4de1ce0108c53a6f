"""Approximate nearest neighbours against a large reference set, for placing millions of points.

An inverted-file index: k-means cuts the (reduced, prepared) reference points
into about sqrt(N) cells; a query is compared with every point of its
``n_probe`` nearest cells only. On the sample+transform path this answers a
million queries against a 50,000-point sample in a small fraction of what the
exact search would take, in parallel numba threads, with the same results
whatever the number of threads. Its state is arrays only (centroids, the
reference rows sorted by cell), rebuilt from the reference when needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .jit import configure_numba_cache
from .neighbors import prepare, to_metric

configure_numba_cache()

import numba  # noqa: E402  (numba reads NUMBA_CACHE_DIR when imported)

DEFAULT_PROBES = 8
MIN_CELLS, MAX_CELLS = 8, 4096


@numba.njit(cache=True, fastmath=True, parallel=True)
def _search_cells(queries, points, order, cell_starts, probes, k):
    """For each query, the k nearest of the points in its probe cells (squared distances, nearest first)."""
    n, d = queries.shape
    best_rows = np.full((n, k), -1, np.int64)
    best_sq = np.full((n, k), np.inf, np.float32)
    for i in numba.prange(n):
        rows = best_rows[i]
        sq = best_sq[i]
        for p in range(probes.shape[1]):
            cell = probes[i, p]
            for j in range(cell_starts[cell], cell_starts[cell + 1]):
                total = np.float32(0.0)
                for t in range(d):
                    diff = queries[i, t] - points[j, t]
                    total += diff * diff
                if total < sq[k - 1]:
                    slot = k - 1
                    while slot > 0 and sq[slot - 1] > total:
                        sq[slot] = sq[slot - 1]
                        rows[slot] = rows[slot - 1]
                        slot -= 1
                    sq[slot] = total
                    rows[slot] = order[j]
    return best_rows, best_sq


@dataclass
class CellIndex:
    """Reference points grouped by k-means cell (``points`` sorted by cell; ``order`` maps back to reference rows)."""

    centroids: np.ndarray  # cells x d float32
    points: np.ndarray  # N x d float32, prepared for the metric, in cell order
    order: np.ndarray  # N int64: reference row of each entry of ``points``
    cell_starts: np.ndarray  # cells + 1 int64
    metric: str

    @classmethod
    def build(cls, reference: np.ndarray, metric: str = "euclidean", n_cells: int | None = None, seed: int = 0) -> "CellIndex":
        from sklearn.cluster import KMeans

        points = prepare(reference, metric)
        n = len(points)
        cells = int(n_cells or np.clip(round(np.sqrt(n)), MIN_CELLS, MAX_CELLS))
        cells = max(1, min(cells, n))
        kmeans = KMeans(cells, n_init=1, max_iter=25, random_state=seed % (2**32)).fit(points)
        labels = kmeans.labels_.astype(np.int64)
        order = np.argsort(labels, kind="stable")
        starts = np.zeros(cells + 1, np.int64)
        np.cumsum(np.bincount(labels, minlength=cells), out=starts[1:])
        return cls(kmeans.cluster_centers_.astype(np.float32), np.ascontiguousarray(points[order]), order, starts, metric)

    @property
    def n_cells(self) -> int:
        return len(self.centroids)

    def search(self, queries: np.ndarray, k: int, n_probe: int = DEFAULT_PROBES) -> tuple[np.ndarray, np.ndarray]:
        """(indices int32, distances float32) of the ``k`` nearest reference rows found, nearest first.

        Slots stay -1 (distance inf) only when the probed cells hold fewer than ``k`` points.
        """
        query = prepare(queries, self.metric)
        k = min(int(k), len(self.points))
        n_probe = max(1, min(int(n_probe), self.n_cells))
        centre_sq = np.einsum("ij,ij->i", self.centroids, self.centroids)
        scores = centre_sq[None, :] - 2.0 * (query @ self.centroids.T)
        if n_probe < self.n_cells:
            probes = np.argpartition(scores, n_probe - 1, axis=1)[:, :n_probe]
        else:
            probes = np.broadcast_to(np.arange(self.n_cells), scores.shape)
        rows, squared = _search_cells(query, self.points, self.order, self.cell_starts, np.ascontiguousarray(probes, np.int64), k)
        distances = np.where(rows >= 0, to_metric(squared, self.metric), np.float32(np.inf)).astype(np.float32)
        return rows.astype(np.int32), distances

"""Data-aware routes: shortest paths through the k-nearest-neighbour graph of the real latents.

Nodes are the real latents (flattened). Every point is joined to its ``k`` nearest
neighbours (the graph is made symmetric), and edges are weighted by
``distance ** power``: with ``power > 1`` many short hops beat one long jump, so
routes keep to dense regions of the data. Components the kNN graph leaves apart
are bridged by their closest pair of points, so a route always exists. Ends that
are not real latents (files, map points, arithmetic) join the graph through their
own ``k`` nearest real neighbours.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

from ..errors import InputError

log = logging.getLogger(__name__)

EXACT_KNN_LIMIT = 30_000  # beyond this many points, approximate neighbours (pynndescent)
CHUNK_BYTES = 64 << 20
ZERO_EDGE = 1e-12  # sparse graphs treat a zero weight as "no edge"; duplicates still need one


def flat(latents: np.ndarray) -> np.ndarray:
    return np.asarray(latents, np.float32).reshape(len(latents), -1)


def nearest_rows(queries: np.ndarray, points: np.ndarray, k: int, exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of ``points`` for each query (Euclidean), computed in memory-bounded chunks.

    Returns (indices, distances), each ``len(queries) x k``, nearest first.
    """
    queries, points = flat(queries), flat(points)
    k = min(k, len(points) - int(exclude_self))
    if k < 1:
        raise InputError(f"need at least {1 + int(exclude_self)} real latents for nearest neighbours, have {len(points)}")
    point_norms = np.einsum("ij,ij->i", points, points, dtype=np.float64)
    rows = max(1, CHUNK_BYTES // max(1, 8 * len(points)))
    indices = np.empty((len(queries), k), np.int64)
    distances = np.empty((len(queries), k), np.float64)
    for start in range(0, len(queries), rows):
        block = queries[start : start + rows].astype(np.float64)
        squared = np.einsum("ij,ij->i", block, block)[:, None] + point_norms[None, :] - 2.0 * block @ points.T.astype(np.float64)
        if exclude_self:
            squared[np.arange(len(block)), np.arange(start, start + len(block))] = np.inf
        part = np.argpartition(squared, k - 1, axis=1)[:, :k]
        part_d = np.take_along_axis(squared, part, axis=1)
        order = np.argsort(part_d, axis=1)
        indices[start : start + len(block)] = np.take_along_axis(part, order, axis=1)
        distances[start : start + len(block)] = np.sqrt(np.maximum(np.take_along_axis(part_d, order, axis=1), 0.0))
    return indices, distances


def knn_table(points: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours of every point among the others: exact for small sets, pynndescent for large."""
    points = flat(points)
    if len(points) <= EXACT_KNN_LIMIT:
        return nearest_rows(points, points, k, exclude_self=True)
    from pynndescent import NNDescent

    log.info("approximate %d-nearest-neighbour graph of %d latents (pynndescent)", k, len(points))
    index = NNDescent(points, n_neighbors=k + 1, random_state=seed, n_jobs=1)
    indices, distances = index.neighbor_graph
    return indices[:, 1:].astype(np.int64), distances[:, 1:].astype(np.float64)


@dataclass
class LatentGraph:
    """The symmetric kNN graph of the real latents, with edge weights ``distance ** power``."""

    points: np.ndarray  # N x D float32
    weights: sparse.csr_matrix  # N x N
    k: int
    power: float

    @classmethod
    def build(cls, latents: np.ndarray, k: int = 10, power: float = 2.0, table=None) -> "LatentGraph":
        """``table`` = precomputed (indices, distances) of each point's neighbours, e.g. from a cached index."""
        if k < 1:
            raise InputError(f"neighbours={k}: must be at least 1")
        if power <= 0:
            raise InputError(f"edge power={power}: must be positive")
        points = flat(latents)
        if len(points) < 2:
            raise InputError(f"a data-aware path needs at least 2 real latents in the scope, it has {len(points)}")
        indices, distances = table if table is not None else knn_table(points, k)
        n = len(points)
        weights = sparse.csr_matrix(
            (_edge_weight(distances.ravel(), power), (np.repeat(np.arange(n), indices.shape[1]), indices.ravel())), shape=(n, n)
        )
        weights = weights.maximum(weights.T).tocsr()
        graph = cls(points, weights, k, power)
        graph._bridge_components()
        return graph

    def _bridge_components(self) -> None:
        """Join components by the closest pair of points between each and the rest, until one is left."""
        count, labels = csgraph.connected_components(self.weights, directed=False)
        if count > 1:
            log.info("kNN graph (k=%d) has %d components; bridging them", self.k, count)
        while count > 1:
            sizes = np.bincount(labels)
            smallest = int(np.argmin(sizes))
            inside = np.flatnonzero(labels == smallest)
            outside = np.flatnonzero(labels != smallest)
            nearest, distance = nearest_rows(self.points[inside], self.points[outside], 1)
            best = int(np.argmin(distance[:, 0]))
            a, b = int(inside[best]), int(outside[nearest[best, 0]])
            weight = _edge_weight(np.array([distance[best, 0]]), self.power)[0]
            bridge = sparse.csr_matrix(([weight, weight], ([a, b], [b, a])), shape=self.weights.shape)
            self.weights = (self.weights + bridge).tocsr()
            count, labels = csgraph.connected_components(self.weights, directed=False)

    def route(self, start: np.ndarray | int, stop: np.ndarray | int) -> list[int]:
        """Rows of the real latents visited between two ends (ends excluded unless they are real rows).

        An end is a real row index, or a latent that joins the graph through its
        ``k`` nearest real latents. The returned list runs from start to stop.
        """
        weights, start_node, stop_node = self._with_ends(start, stop)
        if start_node == stop_node:
            return [start_node] if start_node < len(self.points) else []
        _, predecessors = csgraph.dijkstra(weights, directed=False, indices=start_node, return_predecessors=True)
        nodes = [stop_node]
        while nodes[-1] != start_node:
            previous = int(predecessors[nodes[-1]])
            if previous < 0:  # cannot happen on a bridged graph; kept as a loud guard
                raise RuntimeError("no route between the ends through the kNN graph")
            nodes.append(previous)
        return [node for node in reversed(nodes) if node < len(self.points)]

    def _with_ends(self, start, stop) -> tuple[sparse.csr_matrix, int, int]:
        n = len(self.points)
        extra = [end for end in (start, stop) if not _is_row(end)]
        if not extra:
            return self.weights, int(start), int(stop)
        k = min(self.k, n)
        indices, distances = nearest_rows(np.stack([np.ravel(e) for e in extra]), self.points, k)
        size = n + len(extra)
        rows = np.repeat(np.arange(n, size), k)
        weight = _edge_weight(distances.ravel(), self.power)
        attach = sparse.csr_matrix((np.concatenate([weight, weight]), (np.concatenate([rows, indices.ravel()]), np.concatenate([indices.ravel(), rows]))), shape=(size, size))
        grown = sparse.block_diag([self.weights, sparse.csr_matrix((len(extra), len(extra)))]).tocsr() + attach
        nodes = iter(range(n, size))
        start_node = int(start) if _is_row(start) else next(nodes)
        stop_node = int(stop) if _is_row(stop) else next(nodes)
        if not _is_row(start) and not _is_row(stop) and np.array_equal(np.ravel(start), np.ravel(stop)):
            stop_node = start_node
        return grown.tocsr(), start_node, stop_node


def _is_row(end) -> bool:
    return isinstance(end, (int, np.integer))


def _edge_weight(distances: np.ndarray, power: float) -> np.ndarray:
    return np.asarray(distances, np.float64) ** power + ZERO_EDGE

"""UMAP's layout optimisation, deterministic *and* parallel.

umap-learn optimises the layout by stochastic gradient descent over the edges
of the fuzzy graph. Given a seed it runs on one thread (its parallel version
lets threads race on shared coordinates, so results change run to run). Here
each epoch updates every point from a snapshot of the others' positions taken
at the start of the epoch, and draws its negative samples from its own random
stream, so the result depends only on the seed, not on how many threads run
it or in which order.

The objective, the edge sampling schedule (``epochs_per_sample``), the
attraction / repulsion gradients with their clipping at 4, the linear
learning-rate decay and the a, b curve parameters are UMAP's (McInnes et al.,
2018). umap-learn applies each undirected edge from both ends and moves both
points (``move_other``); updating only the row owner, we apply the attraction
twice, which keeps the expected pull per epoch the same.

The compiled functions are cached on disk (``cache=True``), so later processes
load them instead of compiling.
"""

from __future__ import annotations

import numpy as np

from .jit import configure_numba_cache

configure_numba_cache()

import numba  # noqa: E402  (numba reads NUMBA_CACHE_DIR when imported)

CLIP = 4.0


@numba.njit(cache=True, inline="always")
def _next_random(state):
    """xorshift64*: returns (new state, a 63-bit random number)."""
    state ^= state >> np.uint64(12)
    state ^= state << np.uint64(25)
    state ^= state >> np.uint64(27)
    return state, (state * np.uint64(2685821657736338717)) >> np.uint64(1)


@numba.njit(cache=True)
def seed_streams(seed, n):
    """One random stream per point, derived from ``seed`` by splitmix64."""
    states = np.empty(n, np.uint64)
    x = np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(0x632BE59BD9B4E019)
    for i in range(n):
        x += np.uint64(0x9E3779B97F4A7C15)
        z = x
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
        states[i] = z if z != 0 else np.uint64(1)
    return states


@numba.njit(cache=True, fastmath=True, parallel=True)
def optimise_epoch(head, tail, indptr, neighbours, epochs_per_sample, next_sample, epochs_per_negative, next_negative,
                   streams, a, b, gamma, alpha, epoch, attraction, repel_self):
    """One epoch: move every row of ``head`` along UMAP's gradients; ``tail`` is only read.

    Edges are stored by row (CSR: ``indptr``, ``neighbours``). ``repel_self``
    is False when head and tail are the same points (a point never repels itself).
    """
    n_tail = tail.shape[0]
    dim = head.shape[1]
    for i in numba.prange(head.shape[0]):
        state = streams[i]
        for edge in range(indptr[i], indptr[i + 1]):
            if next_sample[edge] > epoch:
                continue
            j = neighbours[edge]
            dist2 = 0.0
            for d in range(dim):
                diff = head[i, d] - tail[j, d]
                dist2 += diff * diff
            if dist2 > 0.0:
                coeff = -2.0 * a * b * dist2 ** (b - 1.0) / (a * dist2**b + 1.0)
                for d in range(dim):
                    step = coeff * (head[i, d] - tail[j, d])
                    step = min(max(step, -CLIP), CLIP)
                    head[i, d] += attraction * step * alpha
            next_sample[edge] += epochs_per_sample[edge]
            n_negative = int((epoch - next_negative[edge]) / epochs_per_negative[edge])
            for _ in range(n_negative):
                state, draw = _next_random(state)
                k = np.int64(draw % np.uint64(n_tail))
                if k == i and not repel_self:
                    continue
                dist2 = 0.0
                for d in range(dim):
                    diff = head[i, d] - tail[k, d]
                    dist2 += diff * diff
                if dist2 > 0.0:  # coincident points exert no push, as in umap-learn
                    coeff = 2.0 * gamma * b / ((0.001 + dist2) * (a * dist2**b + 1.0))
                    for d in range(dim):
                        step = min(max(coeff * (head[i, d] - tail[k, d]), -CLIP), CLIP)
                        head[i, d] += step * alpha
            next_negative[edge] += n_negative * epochs_per_negative[edge]
        streams[i] = state


def sampling_schedule(weights: np.ndarray, n_epochs: int, negative_sample_rate: float):
    """UMAP's schedule: an edge of weight w is sampled every ``w_max / w`` epochs, negatives ``rate`` times as often."""
    weights = np.asarray(weights, np.float64)
    samples = n_epochs * (weights / weights.max())
    per_sample = np.full(len(weights), -1.0)
    per_sample[samples > 0] = n_epochs / samples[samples > 0]
    per_negative = per_sample / negative_sample_rate
    return per_sample, per_negative


def optimise(head: np.ndarray, tail: np.ndarray | None, rows: np.ndarray, cols: np.ndarray, weights: np.ndarray,
             n_epochs: int, a: float, b: float, seed: int, learning_rate: float = 1.0, negative_sample_rate: int = 5,
             gamma: float = 1.0, on_epoch=None) -> np.ndarray:
    """Optimise ``head`` (N x dim) for ``n_epochs``; ``tail=None`` means head against itself (a fit).

    ``rows`` / ``cols`` / ``weights`` are the edges (head row -> tail row). Returns the new coordinates.
    """
    head = np.ascontiguousarray(head, dtype=np.float32).copy()
    useful = weights > 0
    rows, cols, weights = rows[useful], cols[useful], weights[useful]
    order = np.lexsort((cols, rows))
    rows, cols, weights = rows[order], cols[order].astype(np.int64), weights[order]
    indptr = np.zeros(len(head) + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=len(head)), out=indptr[1:])
    per_sample, per_negative = sampling_schedule(weights, n_epochs, negative_sample_rate)
    next_sample, next_negative = per_sample.copy(), per_negative.copy()
    streams = seed_streams(int(seed) % (2**63), len(head))
    fit = tail is None
    fixed = None if fit else np.ascontiguousarray(tail, dtype=np.float32)
    for epoch in range(n_epochs):
        snapshot = head.copy() if fit else fixed
        alpha = learning_rate * (1.0 - epoch / n_epochs)
        optimise_epoch(head, snapshot, indptr, cols, per_sample, next_sample, per_negative, next_negative, streams,
                       float(a), float(b), float(gamma), float(alpha), float(epoch), 2.0 if fit else 1.0, not fit)
        if on_epoch is not None:
            on_epoch(epoch)
    return head

"""How faithful is a map? Trustworthiness against the latents, and kNN label agreement.

Trustworthiness (Venna & Kaski) penalises points that are close on the map but
far apart in latent space::

    T(k) = 1 - 2 / (n k (2n - 3k - 1)) * sum_i sum_{j in U_k(i)} max(0, r(i, j) - k)

where ``U_k(i)`` are the ``k`` nearest map neighbours of ``i`` and ``r(i, j)``
is the rank of ``j`` among ``i``'s neighbours in latent space. It is a mean of
per-point terms, so for a large set we evaluate it exactly for a random sample
of query points, each ranked against *all* points: an unbiased estimate of the
full value (scikit-learn's version would need the full n x n distance matrix).
With ``sample >= n`` it equals :func:`sklearn.manifold.trustworthiness`.
"""

from __future__ import annotations

import time

import numpy as np

from .reduce import chunk_rows, flat

DEFAULT_K = 10
DEFAULT_SAMPLE = 1000
COMPARE_ELEMENTS = 2**25  # booleans per rank-counting block
DISTANCE_ELEMENTS = 2**26  # float32 distances per query block (256 MB): at a million points, 64 queries per pass over the latents


def _map_neighbours(embedding: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """The k nearest map neighbours of ``rows`` (self excluded)."""
    from scipy.spatial import cKDTree

    tree = cKDTree(np.asarray(embedding, np.float64))
    _, found = tree.query(np.asarray(embedding, np.float64)[rows], k=k + 1)
    out = np.empty((len(rows), k), np.int64)
    for i, (row, candidates) in enumerate(zip(rows, found)):
        others = candidates[candidates != row]
        out[i] = others[:k]
    return out


def _latent_distance_rows(latents: np.ndarray, rows: np.ndarray):
    """Yield (positions in ``rows``, squared distances from those rows to every latent), blockwise.

    ``rows`` must be sorted. The data are centred first, which keeps the float32
    cancellation of the expanded form |q|^2 - 2 q.x + |x|^2 small.
    """
    data = flat(latents)
    n, d = data.shape
    step = chunk_rows(d)
    total = np.zeros(d, np.float64)
    for start in range(0, n, step):
        total += np.asarray(data[start : start + step], np.float64).sum(axis=0)
    mean = (total / n).astype(np.float32)
    sq = np.empty(n, np.float32)
    for start in range(0, n, step):
        block = np.asarray(data[start : start + step], np.float32) - mean
        sq[start : start + step] = np.einsum("ij,ij->i", block, block)
    queries = np.asarray(data[rows], np.float32) - mean
    q_sq = np.einsum("ij,ij->i", queries, queries)
    per_block = max(16, DISTANCE_ELEMENTS // max(n, 1))
    for start in range(0, len(rows), per_block):
        q = queries[start : start + per_block]
        dots = np.empty((len(q), n), np.float32)
        for ref_start in range(0, n, step):
            block = np.asarray(data[ref_start : ref_start + step], np.float32) - mean
            dots[:, ref_start : ref_start + step] = q @ block.T
        dots *= -2.0  # in place, the same sums as q_sq - 2 dots + sq without two more n-wide temporaries
        dots += q_sq[start : start + per_block, None]
        dots += sq[None, :]
        yield np.arange(start, start + len(q)), dots


def map_quality(latents: np.ndarray, embedding: np.ndarray, labels=None, k: int = DEFAULT_K,
                sample: int = DEFAULT_SAMPLE, seed: int = 0) -> dict:
    """Trustworthiness(k) of the map against the latents, and kNN label agreement when labels are given."""
    started = time.perf_counter()
    n = len(embedding)
    k = min(k, max(1, (n - 1) // 2))
    rows = np.arange(n) if sample >= n else np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))
    map_nbrs = _map_neighbours(embedding, rows, k)
    labels = _usable_labels(labels, n)
    penalty = 0.0
    latent_agree = []
    for positions, dist in _latent_distance_rows(latents, rows):
        sample_rows = rows[positions]
        dist[np.arange(len(positions)), sample_rows] = np.inf  # a point is not its own neighbour
        threshold = np.take_along_axis(dist, map_nbrs[positions], axis=1)
        ranks = 1 + _count_below(dist, threshold)
        penalty += float(np.maximum(ranks - k, 0).sum())
        if labels is not None:
            nearest = np.argpartition(dist, k - 1, axis=1)[:, :k]
            latent_agree.append(labels[nearest] == labels[sample_rows][:, None])
    trust = 1.0 - 2.0 / (k * (2.0 * n - 3.0 * k - 1.0)) * penalty / len(rows) if n > 3 * k + 1 else float("nan")
    report = {
        "k": k,
        "trustworthiness": round(trust, 5),
        "trustworthiness_points": int(len(rows)),
        "trustworthiness_sampled": bool(len(rows) < n),
    }
    if labels is not None:
        report.update(_label_report(embedding, labels, k, np.concatenate(latent_agree)))
    report["seconds"] = round(time.perf_counter() - started, 3)
    return report


def _count_below(dist: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """For each row and threshold, how many entries of the row are strictly smaller."""
    counts = np.empty(threshold.shape, np.int64)
    per = max(1, COMPARE_ELEMENTS // max(1, dist.shape[1] * threshold.shape[1]))
    for start in range(0, len(dist), per):
        block = dist[start : start + per]
        counts[start : start + per] = (block[:, None, :] < threshold[start : start + per, :, None]).sum(axis=2)
    return counts


def _usable_labels(labels, n: int):
    if labels is None:
        return None
    labels = np.asarray(labels).astype(str)
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} points")
    present = labels[labels != ""]
    return labels if len(np.unique(present)) >= 2 and len(present) == n else None


def _label_report(embedding: np.ndarray, labels: np.ndarray, k: int, latent_agree: np.ndarray) -> dict:
    everyone = np.arange(len(embedding))
    nbrs = _map_neighbours(embedding, everyone, k)
    map_agree = float((labels[nbrs] == labels[:, None]).mean())
    _, counts = np.unique(labels, return_counts=True)
    share = counts / counts.sum()
    return {
        "label_agreement_map": round(map_agree, 5),
        "label_agreement_latents": round(float(latent_agree.mean()), 5),
        "label_agreement_chance": round(float((share**2).sum()), 5),
        "labels": int(len(counts)),
    }

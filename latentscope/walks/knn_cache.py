"""A small on-disk cache of the kNN table behind data-aware paths.

Stored as plain NumPy files under ``<scope>/cache/`` (safe to delete), keyed by
the size and modification time of ``latents.npy`` and by k, so a re-encoded
scope rebuilds it. Large scopes are where this matters: their approximate
neighbour search takes minutes and each ``latentscope walk`` would repeat it.
"""

from __future__ import annotations

import logging

import numpy as np

from ..errors import StorageError
from ..fileio import load_npy, read_json, write_json, write_npy
from .graph import knn_table

log = logging.getLogger(__name__)

CACHE_FOLDER = "cache"


def cached_knn_table(scope, latents: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, distances) of each real latent's k nearest others, from the cache or computed and cached."""
    if scope is None:
        return knn_table(latents, k)
    folder = scope.path / CACHE_FOLDER
    stem = folder / f"walk-knn-k{int(k)}"
    key = _key(scope, len(latents), k)
    try:
        if read_json(stem.with_suffix(".json")) == key:
            indices, distances = load_npy(stem.with_suffix(".indices.npy")), load_npy(stem.with_suffix(".distances.npy"))
            if indices.shape == distances.shape and len(indices) == len(latents):
                return indices.astype(np.int64), distances.astype(np.float64)
    except (OSError, ValueError):
        pass
    table = knn_table(latents, k)
    try:
        write_npy(stem.with_suffix(".indices.npy"), table[0])
        write_npy(stem.with_suffix(".distances.npy"), table[1])
        write_json(stem.with_suffix(".json"), key)
    except (StorageError, OSError) as exc:
        log.info("kNN table not cached (%s)", exc)
    return table


def _key(scope, count: int, k: int) -> dict:
    from ..scope import LATENTS_FILE

    stat = (scope.path / LATENTS_FILE).stat()
    return {"latents_bytes": stat.st_size, "latents_mtime_ns": stat.st_mtime_ns, "rows": int(count), "k": int(k)}

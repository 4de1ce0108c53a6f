"""Maps of millions of latents: fit UMAP on a representative sample, place the rest with ``transform``.

Above ``SAMPLE_THRESHOLD`` latents, :func:`~latentscope.projection.project` does

1. draw a uniform random sample of ``SAMPLE_SIZE`` rows (seeded; every part of the
   set is represented in proportion to its size);
2. build the neighbour index (PCA + kNN graph) and the UMAP layout of the sample only;
3. place every other latent with the fitted map's ``transform`` (nearest sample
   points found through a :class:`~latentscope.projection.cells.CellIndex`, UMAP's
   membership weights, a few epochs against the fixed map), batch by batch from the
   memory-mapped latents, so memory stays flat however many there are.

When RAPIDS cuML is installed (``import cuml`` works, which needs a CUDA GPU), its
GPU UMAP lays out the sample and transforms the rest instead; the neighbour index
is still ours, so the stored map reloads the same way.
"""

from __future__ import annotations

import logging

import numpy as np
from tqdm.auto import tqdm

from ..errors import InputError
from .cells import DEFAULT_PROBES, CellIndex

log = logging.getLogger(__name__)

SAMPLE_THRESHOLD = 250_000  # more latents than this: fit on a sample, transform the rest
SAMPLE_SIZE = 50_000
TRANSFORM_BATCH = 32_768


def check_sampling(sample_threshold: int | None, sample_size: int) -> None:
    if sample_threshold is not None and sample_threshold < 1:
        raise InputError(f"sample threshold {sample_threshold}: must be at least 1 (or None: never sample)")
    if sample_size < 10:
        raise InputError(f"sample size {sample_size}: must be at least 10")


def uses_sample(n_samples: int, sample_threshold: int | None, sample_size: int) -> bool:
    return sample_threshold is not None and n_samples > sample_threshold and n_samples > sample_size


def representative_sample(n_samples: int, size: int, seed: int = 0) -> np.ndarray:
    """Sorted rows of a uniform random sample without replacement (sorted: memory-map reads stay sequential)."""
    size = min(int(size), n_samples)
    return np.sort(np.random.default_rng(seed).choice(n_samples, size, replace=False))


def cuml_umap():
    """cuML's UMAP class when RAPIDS cuML is installed and usable, else None."""
    try:
        from cuml.manifold import UMAP
    except Exception:  # not installed, or installed without a usable GPU / CUDA runtime
        return None
    return UMAP


def place_in_batches(model, latents, rows: np.ndarray, batch_size: int = TRANSFORM_BATCH, n_probe: int = DEFAULT_PROBES,
                     progress: bool = False, seed: int = 0) -> np.ndarray:
    """Map positions of ``latents[rows]`` on a fitted :class:`LatentProjection`, ``batch_size`` rows at a time."""
    out = np.empty((len(rows), model.embedding_.shape[1]), np.float32)
    if not len(rows):
        return out
    cells = CellIndex.build(model.index_.reduced, model.index_.metric, seed=seed)
    batches = range(0, len(rows), batch_size)
    for start in tqdm(batches, desc="placing", unit="batch", disable=not progress, leave=False):
        block = np.asarray(latents[rows[start : start + batch_size]])
        indices, distances = cells.search(model.index_.reduce(block), model.n_neighbors_, n_probe)
        out[start : start + batch_size] = model.place(indices, distances)
    return out


class CumlLayout:
    """The sample's layout and the rest's placement by cuML's GPU UMAP (same parameters as ours)."""

    def __init__(self, umap_class, model):
        self.umap_class = umap_class
        self.model = model
        self.umap = None

    def fit(self, reduced: np.ndarray) -> np.ndarray:
        model = self.model
        self.umap = self.umap_class(
            n_components=model.n_components, n_neighbors=min(int(model.n_neighbors), len(reduced) - 1),
            min_dist=model.min_dist, spread=model.spread, metric=model.metric, n_epochs=model.layout_epochs(len(reduced)),
            learning_rate=model.learning_rate, negative_sample_rate=model.negative_sample_rate,
            random_state=model.random_state,
        )
        return np.asarray(self.umap.fit_transform(reduced), np.float32)

    def place(self, model, latents, rows: np.ndarray, batch_size: int = TRANSFORM_BATCH, progress: bool = False) -> np.ndarray:
        out = np.empty((len(rows), model.embedding_.shape[1]), np.float32)
        for start in tqdm(range(0, len(rows), batch_size), desc="placing (cuML)", unit="batch", disable=not progress, leave=False):
            block = np.asarray(latents[rows[start : start + batch_size]])
            out[start : start + batch_size] = np.asarray(self.umap.transform(model.index_.reduce(block)), np.float32)
        return out

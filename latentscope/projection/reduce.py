"""PCA before UMAP: wide latents (an SD latent is 16,384 values) are reduced to ~50 dimensions first.

Sets that fit in memory as float32 use randomized PCA; larger ones are read
from the float16 memory map in chunks with :class:`~sklearn.decomposition.IncrementalPCA`.
The fitted state is three plain arrays (``mean``, ``components``,
``explained_variance_ratio``), stored as ``.npy`` files, never pickled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..fileio import load_npy, write_npy

log = logging.getLogger(__name__)

DEFAULT_MEMORY_LIMIT = 2 * 1024**3  # bytes of float32 data PCA may hold at once
CHUNK_BYTES = 128 * 1024**2


def flat(latents: np.ndarray) -> np.ndarray:
    """N x C x h x w (or any N x ...) as N x D without copying."""
    return latents.reshape(len(latents), -1)


def chunk_rows(n_features: int, minimum: int = 1) -> int:
    return max(minimum, CHUNK_BYTES // (4 * max(1, n_features)))


@dataclass
class PCAState:
    """A fitted PCA: ``reduced = (x - mean) @ components.T``."""

    mean: np.ndarray  # D, float32
    components: np.ndarray  # d x D, float32
    explained_variance_ratio: np.ndarray  # d, float64

    FILES = ("pca_mean.npy", "pca_components.npy", "pca_explained_variance_ratio.npy")

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    def transform(self, latents: np.ndarray, progress: bool = False) -> np.ndarray:
        """Project N x ... latents (float16 memory maps welcome) to N x d float32, in chunks."""
        data = flat(latents)
        out = np.empty((len(data), self.n_components), np.float32)
        step = chunk_rows(data.shape[1])
        for start in tqdm(range(0, len(data), step), desc="PCA transform", unit="chunk", disable=not progress or len(data) <= step, leave=False):
            block = np.asarray(data[start : start + step], dtype=np.float32) - self.mean
            out[start : start + step] = block @ self.components.T
        return out

    def inverse_transform(self, reduced: np.ndarray) -> np.ndarray:
        return (np.asarray(reduced, np.float32) @ self.components + self.mean).astype(np.float32)

    def save(self, folder: Path) -> None:
        for name, array in zip(self.FILES, (self.mean, self.components, self.explained_variance_ratio)):
            write_npy(folder / name, array)

    @classmethod
    def load(cls, folder: Path) -> "PCAState | None":
        if not (folder / cls.FILES[0]).exists():
            return None
        return cls(*(load_npy(folder / name) for name in cls.FILES))


def pca_size(n_samples: int, n_features: int, requested: int | None) -> int | None:
    """Components to keep, or None when PCA would not shrink the data."""
    if not requested:
        return None
    size = min(int(requested), n_samples, n_features)
    return None if size >= n_features else size


def fit_pca(latents: np.ndarray, n_components: int, random_state: int | None = 0,
            memory_limit: int = DEFAULT_MEMORY_LIMIT, progress: bool = False) -> tuple[PCAState, np.ndarray]:
    """Fit PCA and return its state with the reduced training data (N x d float32)."""
    data = flat(latents)
    n, d = data.shape
    if n * d * 4 <= memory_limit:
        from sklearn.decomposition import PCA

        model = PCA(n_components, svd_solver="randomized", random_state=random_state)
        reduced = model.fit_transform(np.asarray(data, dtype=np.float32)).astype(np.float32)
        log.info("randomized PCA %d -> %d dims keeps %.1f%% of the variance", d, n_components, 100 * model.explained_variance_ratio_.sum())
    else:
        model = _incremental_pca(data, n_components, progress)
        reduced = None
    state = PCAState(
        model.mean_.astype(np.float32), model.components_.astype(np.float32), model.explained_variance_ratio_.astype(np.float64)
    )
    if reduced is None:
        reduced = state.transform(data, progress)
    return state, reduced


def _incremental_pca(data: np.ndarray, n_components: int, progress: bool):
    from sklearn.decomposition import IncrementalPCA

    step = chunk_rows(data.shape[1], minimum=n_components)
    model = IncrementalPCA(n_components)
    starts = list(range(0, len(data), step))
    if len(starts) > 1 and len(data) - starts[-1] < n_components:
        starts.pop()  # IncrementalPCA needs >= n_components rows per chunk: the last chunk absorbs the tail
    ends = starts[1:] + [len(data)]
    log.info("incremental PCA over %d chunks of the memory-mapped latents", len(starts))
    for start, end in tqdm(list(zip(starts, ends)), desc="incremental PCA", unit="chunk", disable=not progress, leave=False):
        model.partial_fit(np.asarray(data[start:end], dtype=np.float32))
    return model

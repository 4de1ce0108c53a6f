"""PCA before UMAP: wide latents (an SD latent is 16,384 values) are reduced to ~50 dimensions first.

Narrow latents (up to 1,024 values, many more latents than values) get exact PCA from a covariance matrix
accumulated over chunks of the float16 memory map; wider sets that fit in
memory as float32 use randomized PCA; wider and larger ones are read in chunks
by :class:`~sklearn.decomposition.IncrementalPCA`.
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
COVARIANCE_MAX_FEATURES = 1024  # up to this many values per latent, PCA goes through the exact covariance
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
    """Fit PCA and return its state with the reduced training data (N x d float32).

    * up to ``COVARIANCE_MAX_FEATURES`` values per latent and at least twice as many latents: the
      exact covariance, accumulated over chunks of the memory map (little memory), and its top
      eigenvectors;
    * otherwise, when the latents fit in ``memory_limit`` bytes as float32: randomized PCA;
    * wider and larger: IncrementalPCA over chunks of the memory map.
    """
    data = flat(latents)
    n, d = data.shape
    if d <= COVARIANCE_MAX_FEATURES and n >= 2 * d:
        state = _covariance_pca(data, n_components, progress)
    elif n * d * 4 <= memory_limit:
        from sklearn.decomposition import PCA

        # two power iterations instead of scikit-learn's seven: half the time, the same subspace to 0.1 % of variance
        model = PCA(n_components, svd_solver="randomized", iterated_power=2, random_state=random_state)
        state = _state(model.fit(np.asarray(data, dtype=np.float32)))
    else:
        state = _state(_incremental_pca(data, n_components, progress))
    log.info("PCA %d -> %d dims keeps %.1f%% of the variance", d, n_components, 100 * state.explained_variance_ratio.sum())
    # training points go through the same projection as later queries (a fit's U*S differs slightly)
    return state, state.transform(data, progress)


def _state(model) -> PCAState:
    return PCAState(model.mean_.astype(np.float32), model.components_.astype(np.float32),
                    model.explained_variance_ratio_.astype(np.float64))


def _chunks(data: np.ndarray, desc: str, progress: bool):
    step = chunk_rows(data.shape[1])
    starts = range(0, len(data), step)
    for start in tqdm(starts, desc=desc, unit="chunk", disable=not progress or len(starts) < 4, leave=False):
        yield np.asarray(data[start : start + step], dtype=np.float32)


def _covariance_pca(data: np.ndarray, n_components: int, progress: bool) -> PCAState:
    """Exact PCA from the covariance matrix, two passes over the data in chunks."""
    from scipy.linalg import eigh

    n, d = data.shape
    total = np.zeros(d, np.float64)
    for block in _chunks(data, "PCA mean", progress):
        total += block.sum(axis=0, dtype=np.float64)
    mean = (total / n).astype(np.float32)
    scatter = np.zeros((d, d), np.float64)
    for block in _chunks(data, "PCA covariance", progress):
        centred = block - mean  # not in place: a float32 block may be a view of the caller's array
        scatter += centred.T @ centred
    covariance = scatter / max(n - 1, 1)
    values, vectors = eigh(covariance, subset_by_index=[d - n_components, d - 1])
    order = np.argsort(values)[::-1]
    values, vectors = np.maximum(values[order], 0.0), vectors[:, order].T
    signs = np.sign(vectors[np.arange(len(vectors)), np.argmax(np.abs(vectors), axis=1)])
    vectors *= np.where(signs == 0, 1.0, signs)[:, None]  # deterministic signs, as scikit-learn's svd_flip
    ratio = values / max(float(np.trace(covariance)), 1e-30)
    return PCAState(mean, vectors.astype(np.float32), ratio)


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

"""Simple anomaly baselines in the same fit / score API as the diffusion score.

* ``roundtrip``: the autoencoder round trip, no diffusion: the max of a box-smoothed
  squared-error map between the image and ``decode(latent)``.
* ``knn-latent`` / ``knn-pixel``: mean distance to the k nearest reference images,
  in latent space or in pixel space.
* ``iforest-latent``: an Isolation Forest on the flattened latents.
* ``pca-pixel``: PCA reconstruction error in pixel space (with a per-pixel error map).

Fitted state is NumPy arrays (nothing is pickled), so a fitted method can be
rebuilt from its reference at any time.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from .base import Batch, Method, Scores
from .maps import box_smooth, squared_error_map

MAX_REFERENCE = 20_000  # larger references are subsampled (seeded) before fitting


def _flat(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array.reshape(len(array), -1), dtype=np.float32)


def _subsample(reference: Batch, limit: int, seed: int) -> Batch:
    if len(reference) <= limit:
        return reference
    keep = np.sort(np.random.default_rng(seed).choice(len(reference), limit, replace=False))
    return reference.take(keep)


class RoundTrip(Method):
    """Autoencoder round-trip error: max of a ``window`` x ``window`` box-smoothed squared-error map."""

    name = "roundtrip"
    has_maps = True

    def __init__(self, codec, window: int = 5, batch_size: int = 64):
        self.codec = codec
        self.window = window
        self.batch_size = batch_size

    def score(self, batch: Batch) -> Scores:
        maps = []
        for start in range(0, len(batch), self.batch_size):
            part = batch.take(slice(start, start + self.batch_size))
            decoded = self.codec.decode(torch.from_numpy(part.latents)).cpu()
            maps.append(box_smooth(squared_error_map(decoded, part.images_tensor()), self.window))
        smoothed = torch.cat(maps) if maps else torch.zeros(0, *batch.image_size)
        scores = smoothed.reshape(len(smoothed), -1).max(dim=1).values
        return Scores(scores.numpy(), smoothed.numpy(), {"mean_error": smoothed.mean(dim=(1, 2)).numpy()})


class _NearestNeighbours(Method):
    space = "latent"

    def __init__(self, k: int = 5, seed: int = 0):
        if k < 1:
            raise InputError(f"k={k}: must be at least 1")
        self.k = k
        self.seed = seed

    def _features(self, batch: Batch) -> np.ndarray:
        return _flat(batch.latents) if self.space == "latent" else _flat(batch.pixels) / 255.0

    def fit(self, reference: Batch) -> "_NearestNeighbours":
        reference = _subsample(reference, MAX_REFERENCE, self.seed)
        self.reference_ = torch.from_numpy(self._features(reference))
        self.reference_ids_ = torch.as_tensor(np.array(reference.ids, dtype=np.int64))
        if len(reference) <= self.k:
            raise InputError(f"{self.name}: {len(reference)} reference images, need more than k={self.k}")
        return self

    def score(self, batch: Batch) -> Scores:
        queries = torch.from_numpy(self._features(batch))
        ids = torch.as_tensor(np.array(batch.ids, dtype=np.int64))
        out = []
        for start in range(0, len(queries), 256):
            distances = torch.cdist(queries[start : start + 256], self.reference_)
            # an image never counts as its own neighbour (when the reference is the scored set itself)
            same = ids[start : start + 256, None] == self.reference_ids_[None, :]
            distances[same] = float("inf")
            out.append(distances.topk(self.k, dim=1, largest=False).values.mean(dim=1))
        return Scores(torch.cat(out).numpy() if out else np.zeros(0))


class KNNLatent(_NearestNeighbours):
    """Mean Euclidean distance to the ``k`` nearest reference latents."""

    name = "knn-latent"
    space = "latent"


class KNNPixel(_NearestNeighbours):
    """Mean Euclidean distance to the ``k`` nearest reference images in pixel space (values 0..1)."""

    name = "knn-pixel"
    space = "pixel"


class IsolationForestLatent(Method):
    """scikit-learn's Isolation Forest on flattened latents (score = minus its decision function)."""

    name = "iforest-latent"

    def __init__(self, trees: int = 200, seed: int = 0):
        self.trees = trees
        self.seed = seed

    def fit(self, reference: Batch) -> "IsolationForestLatent":
        from sklearn.ensemble import IsolationForest

        reference = _subsample(reference, MAX_REFERENCE, self.seed)
        self.forest_ = IsolationForest(n_estimators=self.trees, random_state=self.seed).fit(_flat(reference.latents))
        return self

    def score(self, batch: Batch) -> Scores:
        return Scores(-self.forest_.score_samples(_flat(batch.latents)).astype(np.float64))


class PCAPixel(Method):
    """PCA reconstruction error in pixel space; the map is the per-pixel squared error (box-smoothed)."""

    name = "pca-pixel"
    has_maps = True

    def __init__(self, components: int = 20, window: int = 5, seed: int = 0):
        self.components = components
        self.window = window
        self.seed = seed

    def fit(self, reference: Batch) -> "PCAPixel":
        from sklearn.decomposition import PCA

        reference = _subsample(reference, MAX_REFERENCE, self.seed)
        count = min(self.components, len(reference) - 1)
        if count < 1:
            raise InputError(f"{self.name}: needs at least 2 reference images")
        self.pca_ = PCA(count, random_state=self.seed).fit(_flat(reference.pixels) / 255.0)
        return self

    def score(self, batch: Batch) -> Scores:
        flat = _flat(batch.pixels) / 255.0
        rebuilt = self.pca_.inverse_transform(self.pca_.transform(flat)).reshape(batch.pixels.shape)
        error = torch.from_numpy(((rebuilt - batch.pixels / 255.0) ** 2).mean(axis=-1).astype(np.float32))
        smoothed = box_smooth(error, self.window)
        return Scores(smoothed.reshape(len(batch), -1).max(dim=1).values.numpy(), smoothed.numpy(),
                      {"mean_error": error.mean(dim=(1, 2)).numpy()})


BASELINES = {cls.name: cls for cls in (RoundTrip, KNNLatent, IsolationForestLatent, PCAPixel, KNNPixel)}

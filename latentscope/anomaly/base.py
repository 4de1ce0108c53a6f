"""What every anomaly method shares: its inputs, its outputs and the fit / score interface."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InputError


@dataclass
class Batch:
    """Images to score: uint8 pixels N x H x W x 3 (the scope's preprocessed images), their scaled latents
    N x C x h x w (float32) and their ids (any unique integers; kNN methods use them to skip an image's own copy)."""

    pixels: np.ndarray
    latents: np.ndarray
    ids: np.ndarray | None = None

    def __post_init__(self):
        self.pixels = np.asarray(self.pixels, dtype=np.uint8)
        self.latents = np.asarray(self.latents, dtype=np.float32)
        if self.pixels.ndim != 4 or self.pixels.shape[-1] != 3:
            raise InputError(f"pixels of shape {self.pixels.shape}: expected N x H x W x 3")
        if self.latents.ndim != 4 or len(self.latents) != len(self.pixels):
            raise InputError(f"latents of shape {self.latents.shape} for {len(self.pixels)} images: expected N x C x h x w")
        self.ids = np.arange(len(self.pixels)) if self.ids is None else np.asarray(self.ids, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.pixels)

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.pixels.shape[1]), int(self.pixels.shape[2])

    def take(self, index) -> "Batch":
        return Batch(self.pixels[index], self.latents[index], self.ids[index])

    def images_tensor(self, device="cpu") -> torch.Tensor:
        """Pixels as N x 3 x H x W floats in [-1, 1]."""
        tensor = torch.from_numpy(self.pixels).to(device).permute(0, 3, 1, 2).float()
        return tensor.div_(127.5).sub_(1.0)


@dataclass
class Scores:
    """One method's output for a batch: an image score each (higher = more anomalous), an optional error map
    each (N x h x w, higher = more anomalous) and named per-image parts (columns of the scores table)."""

    scores: np.ndarray
    maps: np.ndarray | None = None
    parts: dict[str, np.ndarray] = field(default_factory=dict)

    @staticmethod
    def concat(results: list["Scores"]) -> "Scores":
        if not results:
            return Scores(np.zeros(0))
        maps = None if results[0].maps is None else np.concatenate([r.maps for r in results])
        parts = {k: np.concatenate([r.parts[k] for r in results]) for k in results[0].parts}
        return Scores(np.concatenate([r.scores for r in results]), maps, parts)


class Method:
    """An anomaly method: ``fit`` on known-normal (or mostly normal) images, then ``score`` any images.

    Subclasses set ``name`` and ``has_maps`` and implement ``fit`` (returning self) and ``score``.
    """

    name = "method"
    has_maps = False

    def fit(self, reference: Batch) -> "Method":
        return self

    def score(self, batch: Batch) -> Scores:
        raise NotImplementedError

    def params(self) -> dict:
        """Parameters recorded beside stored scores."""
        return {k: v for k, v in vars(self).items() if not k.endswith("_") and not k.startswith("_") and _plain(v)}


def _plain(value) -> bool:
    return isinstance(value, (int, float, str, bool, type(None))) or (
        isinstance(value, (list, tuple)) and all(isinstance(v, (int, float, str)) for v in value)
    )

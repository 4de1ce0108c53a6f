"""The diffusion reconstruction score: several noise levels, several draws, calibrated against normal images.

Recipe (after DDPM-OOD, Graham et al. 2023, extended to error maps):

1. :class:`~latentscope.anomaly.reconstruct.Reconstructor` reconstructs each
   image at every level ``t`` (level 0 is the autoencoder round trip), averaging
   the pixel squared-error maps and latent errors over ``draws`` noise draws.
2. Each level's error map is smoothed and turned into a *z-map* against the
   reference images (the scope's own images unless another reference is given):
   ``(e(p) - median(p)) / scale(p)`` per position ``p``, with robust statistics
   (median, 1.4826 x MAD) so a minority of anomalies in the reference does not
   move them, and a scale floor so positions where normal images never err do
   not explode. The heatmap is the mean z-map over levels.
3. Image terms, each standardised against the reference (median / MAD):
   ``local`` = mean of the top ``top_k`` share of the heatmap (small defects),
   ``global`` = mean over levels of the z-scored mean pixel error,
   ``latent`` = mean over levels of the z-scored latent error.
4. The score is the mean of the terms (an image far out on any of them ranks high).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from .base import Batch, Method, Scores
from .maps import smooth, top_k_mean
from .reconstruct import LevelErrors, Reconstructor

DEFAULT_LEVELS = (0.0, 0.1, 0.25)
DEFAULT_STEPS = 5
DEFAULT_DRAWS = 4
TERMS = ("local", "global", "latent")
MAD_TO_SIGMA = 1.4826


def robust_location_scale(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Median and MAD-based standard deviation along ``axis``."""
    median = np.median(values, axis=axis)
    scale = MAD_TO_SIGMA * np.median(np.abs(values - np.expand_dims(median, axis)), axis=axis)
    return median, scale


def standardise(values: np.ndarray, location, scale, eps: float = 1e-12) -> np.ndarray:
    return (values - location) / np.maximum(scale, eps)


def level_label(t: float) -> str:
    return f"t{t:.2f}"


class DiffusionScore(Method):
    """Multi-level diffusion reconstruction score with per-position calibrated heatmaps.

    Parameters
    ----------
    codec, denoiser : the scope's autoencoder and a denoiser over its scaled latents.
    levels : noise levels ``t`` in [0, 1]; 0 is the round trip.
    steps : DDIM steps per level.  draws : noise draws averaged per level.  seed : noise seed.
    smoothing : Gaussian sigma of the maps, as a fraction of the map's shorter side.
    floor : scale floor, as a fraction of the median per-position scale.
    top_k : share of the heatmap's highest values averaged into the ``local`` term.
    terms : which image terms the score averages.
    """

    name = "diffusion"
    has_maps = True

    def __init__(self, codec, denoiser, levels=DEFAULT_LEVELS, steps: int = DEFAULT_STEPS, draws: int = DEFAULT_DRAWS,
                 seed: int = 0, smoothing: float = 1 / 32, floor: float = 0.5, top_k: float = 0.01, terms=TERMS,
                 batch_size: int = 32):
        self.reconstructor = Reconstructor(codec, denoiser, levels, steps, draws, seed)
        self.levels = list(self.reconstructor.levels)
        self.steps, self.draws, self.seed = self.reconstructor.steps, self.reconstructor.draws, self.reconstructor.seed
        self.smoothing = float(smoothing)
        self.floor = float(floor)
        self.top_k = float(top_k)
        unknown = [t for t in terms if t not in TERMS]
        if unknown or not terms:
            raise InputError(f"terms {unknown or 'none'}: choose from {', '.join(TERMS)}")
        self.terms = [t for t in TERMS if t in terms]
        self.batch_size = int(batch_size)

    # ------------------------------------------------------------------ measuring (the costly part)

    def measure(self, batch: Batch) -> LevelErrors:
        parts = []
        for start in range(0, len(batch), self.batch_size):
            part = batch.take(slice(start, start + self.batch_size))
            parts.append(self.reconstructor.measure(part.latents, part.images_tensor(), part.ids))
        return LevelErrors.concat(parts) if parts else LevelErrors(np.zeros((0, len(self.levels), 1, 1)), np.zeros((0, len(self.levels))))

    def _smoothed(self, maps: np.ndarray) -> np.ndarray:
        n, levels, h, w = maps.shape
        sigma = self.smoothing * min(h, w)
        flat = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32)).reshape(n * levels, h, w)
        return smooth(flat, sigma).reshape(n, levels, h, w).numpy()

    # ------------------------------------------------------------------ calibration

    def fit(self, reference: Batch) -> "DiffusionScore":
        return self.fit_errors(self.measure(reference))

    def fit_errors(self, errors: LevelErrors) -> "DiffusionScore":
        """Per-level, per-position statistics and image-term statistics from the reference's errors."""
        if len(errors.maps) < 2:
            raise InputError(f"diffusion score: calibration needs at least 2 reference images, got {len(errors.maps)}")
        maps = self._smoothed(errors.maps)
        location, scale = robust_location_scale(maps)  # L x h x w each
        sigma = self.smoothing * min(scale.shape[-2:])
        scale = smooth(torch.from_numpy(scale.astype(np.float32)), sigma).numpy()
        floor = self.floor * np.median(scale.reshape(len(scale), -1), axis=1)
        self.map_location_ = location.astype(np.float32)
        self.map_scale_ = np.sqrt(scale**2 + floor[:, None, None] ** 2).astype(np.float32)
        self.map_scale_ = np.maximum(self.map_scale_, 1e-12)
        raw = self._raw_terms(errors, maps)
        self.term_location_, self.term_scale_ = {}, {}
        for name, values in raw.items():
            location, scale = robust_location_scale(np.asarray(values, dtype=np.float64))
            self.term_location_[name], self.term_scale_[name] = location, scale
        return self

    def calibration(self) -> dict[str, np.ndarray]:
        """The fitted state as plain arrays (stored beside the scores; no pickles)."""
        out = {"map_location": self.map_location_, "map_scale": self.map_scale_}
        for name in self.term_location_:
            out[f"term_location/{name}"] = np.asarray(self.term_location_[name], dtype=np.float64)
            out[f"term_scale/{name}"] = np.asarray(self.term_scale_[name], dtype=np.float64)
        return out

    def load_calibration(self, arrays: dict[str, np.ndarray]) -> "DiffusionScore":
        self.map_location_ = np.asarray(arrays["map_location"], dtype=np.float32)
        self.map_scale_ = np.asarray(arrays["map_scale"], dtype=np.float32)
        if self.map_location_.shape[0] != len(self.levels):
            raise InputError(f"stored calibration has {self.map_location_.shape[0]} levels, the scorer {len(self.levels)}")
        self.term_location_ = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("term_location/")}
        self.term_scale_ = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("term_scale/")}
        return self

    # ------------------------------------------------------------------ scoring

    def _zmaps(self, maps: np.ndarray) -> np.ndarray:
        return (maps - self.map_location_[None]) / self.map_scale_[None]

    def _raw_terms(self, errors: LevelErrors, smoothed: np.ndarray) -> dict[str, np.ndarray]:
        heat = self._zmaps(smoothed).mean(axis=1) if hasattr(self, "map_location_") else None
        raw = {f"global/{level_label(t)}": errors.maps[:, i].mean(axis=(1, 2)) for i, t in enumerate(self.levels)}
        raw.update({f"latent/{level_label(t)}": errors.latent[:, i] for i, t in enumerate(self.levels) if t > 0})
        if heat is not None:
            raw["local"] = top_k_mean(torch.from_numpy(np.ascontiguousarray(heat)), self.top_k).numpy()
        return raw

    def heatmaps(self, errors: LevelErrors) -> np.ndarray:
        """N x h x w mean z-map over levels."""
        return self._zmaps(self._smoothed(errors.maps)).mean(axis=1)

    def score_errors(self, errors: LevelErrors) -> Scores:
        smoothed = self._smoothed(errors.maps)
        zmaps = self._zmaps(smoothed)
        heat = zmaps.mean(axis=1)
        raw = self._raw_terms(errors, smoothed)
        if "local" not in self.term_location_:  # calibrated by fit_errors before the heatmap existed: finish now
            raise RuntimeError("calibration incomplete")
        z = {name: standardise(values, self.term_location_[name], self.term_scale_[name]) for name, values in raw.items()}
        terms = {}
        if "local" in self.terms:
            terms["local"] = z["local"]
        for kind in ("global", "latent"):
            names = [k for k in z if k.startswith(kind + "/")]
            if kind in self.terms and names:
                terms[kind] = np.mean([z[k] for k in names], axis=0)
        score = np.mean(list(terms.values()), axis=0)
        parts = dict(terms)
        for i, t in enumerate(self.levels):  # per-level parts: each level's own z-scored errors, averaged
            own = [z[f"global/{level_label(t)}"]] + ([z[f"latent/{level_label(t)}"]] if t > 0 else [])
            parts[level_label(t)] = np.mean(own, axis=0)
        return Scores(score.astype(np.float64), heat.astype(np.float32), {k: np.asarray(v, np.float64) for k, v in parts.items()})

    def score(self, batch: Batch) -> Scores:
        return self.score_errors(self.measure(batch))

"""The diffusion reconstruction score: several noise levels, several draws, calibrated against normal images.

Recipe (after DDPM-OOD, Graham et al. 2023, extended to error maps and terms measured against
the reference images' latents and denoiser features):

1. :class:`~latentscope.anomaly.reconstruct.Reconstructor` reconstructs each
   image at every level ``t`` (level 0 is the autoencoder round trip), averaging
   the pixel squared-error maps and latent errors over ``draws`` noise draws.
2. Each level's error map is smoothed and turned into a *z-map* against the
   reference images (the scope's own images unless another reference is given):
   ``(e(p) - median(p)) / scale(p)`` per position ``p``, with robust statistics
   (median, 1.4826 x MAD) so a minority of anomalies in the reference does not
   move them, and a scale floor (a share of the level's root-mean-square scale)
   so positions where normal images never err do not explode. The statistics come
   from the image's ``neighbours`` nearest reference images in the denoiser's
   feature space (never itself): how much a normal image errs where depends on
   what it shows (edges, texture, strokes), so an image is compared with images
   the denoiser sees as alike; with
   ``neighbours=0``, from all reference images. The heatmap is the mean z-map over
   levels.
3. Image terms, each a robust z-score against the reference (median / MAD):
   ``local`` = mean of the top ``top_k`` share of the heatmap (small defects),
   ``global`` = mean over levels of the z-scored mean pixel error,
   ``latent`` = mean over levels of the z-scored latent error,
   ``density`` = mean distance to the ``k`` nearest reference latents (an image
   never counts as its own neighbour): how typical the image is for the scope,
   which reconstruction cannot tell when the autoencoder reconstructs an unseen
   kind of image as well as the usual ones,
   ``style`` = the same distance between the latents' per-channel means and
   spreads over positions: how typical the image's overall colour, tone and
   texture are, wherever things are placed,
   ``content`` = the same distance between the denoiser's bottleneck features
   (:meth:`~latentscope.denoiser.Denoiser.features`: its mid block's activations
   on the clean latent), how typical what the image shows is in the eyes of the
   model of normal images; it separates unseen kinds of image better than the
   latents do, because the denoiser has learnt what the normal images have in
   common,
   ``gist`` = the same distance between those features' means over positions:
   what the image shows wherever it is placed (an image cut from an unseen
   photograph is often near normal images position by position, but not in
   its overall make-up).
4. Terms live on different scales and have different tails, so each is turned
   into a *surprise* ``-log P(term >= value)`` under the reference's own
   distribution of that term: the empirical distribution below its 90th
   percentile, an exponential tail above it fitted to the reference values
   beyond that percentile by their median excess (so values beyond every
   reference image still rank, and a few anomalies among the reference images
   do not stretch the tail). The score is the largest surprise over the
   chosen terms (a min-p combination: an image far out on any term ranks high,
   and a term with heavy-tailed normal values cannot drown the others).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from ..errors import InputError
from .base import Batch, Method, Scores
from .maps import smooth, top_k_mean
from .reconstruct import DEFAULT_DRAWS, DEFAULT_LEVELS, DEFAULT_STEPS, LevelErrors, Reconstructor

TERMS = ("local", "global", "latent", "density", "style", "content", "gist")
DEFAULT_TERMS = ("local", "content", "gist")
REFERENCE_TERMS = ("density", "style", "content", "gist")  # kNN distances to the density reference's images
FEATURE_TERMS = ("content", "gist")  # ... measured on the denoiser's features
REFERENCE_KEYS = {"density": "density_latents", "style": "style_statistics", "content": "content_features",
                  "gist": "gist_features"}  # each term's reference in a stored calibration
SURPRISE_PREFIX = "surprise:"  # stored parts "surprise:local", ...: each chosen term's tail surprise
MAD_TO_SIGMA = 1.4826
TAIL_QUANTILE = 0.9
MAX_DENSITY_REFERENCE = 20_000


def robust_location_scale(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Median and MAD-based standard deviation along ``axis``."""
    median = np.median(values, axis=axis)
    scale = MAD_TO_SIGMA * np.median(np.abs(values - np.expand_dims(median, axis)), axis=axis)
    return median, scale


def standardise(values: np.ndarray, location, scale, eps: float = 1e-12) -> np.ndarray:
    return (values - location) / np.maximum(scale, eps)


def level_label(t: float) -> str:
    return f"t{t:.2f}"


def tail_surprise(values: np.ndarray, reference: np.ndarray, quantile: float = TAIL_QUANTILE) -> np.ndarray:
    """``-log P(X >= value)`` for X distributed like ``reference``: empirical up to its ``quantile``, an
    exponential tail above it. The tail's scale is fitted to the reference values beyond that quantile by
    their median excess (``median(x - q) / ln 2``, the maximum of robustness for an exponential), so
    anomalies among the reference images (fewer than half of the values in the tail) do not stretch it."""
    reference = np.sort(np.asarray(reference, dtype=np.float64))
    values = np.asarray(values, dtype=np.float64)
    threshold = float(np.quantile(reference, quantile))
    excess = reference[reference > threshold] - threshold
    scale = max(float(np.median(excess)) / np.log(2.0) if len(excess) else 0.0, 1e-12)
    below = 1.0 - np.searchsorted(reference, values, side="left") / (len(reference) + 1.0)
    tail = -np.log(1.0 - quantile) + np.maximum(values - threshold, 0.0) / scale  # in log space: no underflow
    return np.where(values > threshold, tail, -np.log(np.maximum(below, 1.0 - quantile)))


def latent_statistics(latents: np.ndarray) -> np.ndarray:
    """N x 2C: each channel's mean and standard deviation over the latent's positions (the ``style`` term's space)."""
    latents = np.asarray(latents, dtype=np.float32)
    flat = latents.reshape(len(latents), latents.shape[1], -1)
    return np.ascontiguousarray(np.concatenate([flat.mean(axis=2), flat.std(axis=2)], axis=1))


def latent_digests(latents: np.ndarray) -> list[bytes]:
    """A short hash of each image's float32 latent: tells whether two latents are the same image's."""
    flat = np.ascontiguousarray(np.asarray(latents, dtype=np.float32).reshape(len(latents), -1))
    return [hashlib.blake2b(row.tobytes(), digest_size=8).digest() for row in flat]


def term_space(term: str, latents: np.ndarray, features: np.ndarray | None) -> np.ndarray:
    """N x D: the space a reference term measures kNN distances in."""
    if term == "density":
        return np.asarray(latents, dtype=np.float32).reshape(len(latents), -1)
    if term == "style":
        return latent_statistics(latents)
    if term == "content":
        return np.ascontiguousarray(features.reshape(len(features), -1), dtype=np.float32)
    return np.ascontiguousarray(features.mean(axis=(2, 3)), dtype=np.float32)


def _nearest(queries: np.ndarray, query_ids: np.ndarray, reference: torch.Tensor, reference_ids: torch.Tensor, k: int):
    """(distances, rows) of each flattened query's ``k`` nearest reference rows, skipping rows with its own id."""
    queries = torch.as_tensor(np.ascontiguousarray(queries.reshape(len(queries), -1), dtype=np.float32))
    ids = torch.as_tensor(np.array(query_ids, dtype=np.int64))
    k = min(k, len(reference) - 1) if len(reference) > 1 else 1
    values, rows = [], []
    for start in range(0, len(queries), 256):
        distances = torch.cdist(queries[start:start + 256], reference)
        distances[ids[start:start + 256, None] == reference_ids[None, :]] = float("inf")
        nearest = distances.topk(k, dim=1, largest=False)
        values.append(nearest.values)
        rows.append(nearest.indices)
    if not values:
        return torch.zeros((0, k)), torch.zeros((0, k), dtype=torch.int64)
    return torch.cat(values), torch.cat(rows)


def knn_distance(queries: np.ndarray, query_ids: np.ndarray, reference: torch.Tensor, reference_ids: torch.Tensor,
                 k: int) -> np.ndarray:
    """Mean Euclidean distance of each flattened query to its ``k`` nearest reference rows, skipping its own id."""
    return _nearest(queries, query_ids, reference, reference_ids, k)[0].mean(dim=1).numpy().astype(np.float64)


def nearest_rows(queries: np.ndarray, query_ids: np.ndarray, reference: torch.Tensor, reference_ids: torch.Tensor,
                 k: int) -> np.ndarray:
    """N x k indices of each flattened query's nearest reference rows, skipping its own id."""
    return _nearest(queries, query_ids, reference, reference_ids, k)[1].numpy()


def median(values: torch.Tensor, dim: int) -> torch.Tensor:
    """The median along ``dim``, the mean of the two middle values for an even count (as NumPy's)."""
    ordered = values.movedim(dim, -1).contiguous().sort(dim=-1).values  # sorting along the last axis: ~3x faster
    count = values.shape[dim]
    return ordered.narrow(-1, (count - 1) // 2, 2 - count % 2).mean(dim=-1)


class DiffusionScore(Method):
    """Multi-level diffusion reconstruction score with per-position calibrated heatmaps and reference (kNN) terms.

    Parameters
    ----------
    codec, denoiser : the scope's autoencoder and a denoiser over its scaled latents.
    levels : noise levels ``t`` in [0, 1]; 0 is the round trip.
    steps : DDIM steps per level.  draws : noise draws averaged per level.  seed : noise seed.
    smoothing : Gaussian sigma of the maps, as a fraction of the map's shorter side.
    floor : scale floor, as a share of the level's root-mean-square per-position scale.
    top_k : share of the heatmap's highest values averaged into the ``local`` term.
    terms : image terms combined into the score (any of ``local``, ``global``, ``latent``, ``density``, ``style``,
        ``content``, ``gist``).
    k : neighbours of the reference terms (``density``, ``style``, ``content``, ``gist``).
    neighbours : nearest reference images (by the denoiser's features) whose error maps calibrate an image's map;
        0 = all.
    """

    name = "diffusion"
    has_maps = True

    def __init__(self, codec, denoiser, levels=DEFAULT_LEVELS, steps: int = DEFAULT_STEPS, draws: int = DEFAULT_DRAWS,
                 seed: int = 0, smoothing: float = 1 / 32, floor: float = 0.5, top_k: float = 0.01, terms=DEFAULT_TERMS,
                 k: int = 5, neighbours: int = 16, batch_size: int = 32):
        self.reconstructor = Reconstructor(codec, denoiser, levels, steps, draws, seed)
        self.levels = list(self.reconstructor.levels)
        self.steps, self.draws, self.seed = self.reconstructor.steps, self.reconstructor.draws, self.reconstructor.seed
        self.smoothing = float(smoothing)
        self.floor = float(floor)
        self.top_k = float(top_k)
        terms = [terms] if isinstance(terms, str) else list(terms)
        unknown = [t for t in terms if t not in TERMS]
        if unknown or not terms:
            raise InputError(f"terms {unknown or 'none'}: choose from {', '.join(TERMS)}")
        self.terms = [t for t in TERMS if t in terms]
        if int(k) < 1:
            raise InputError(f"k={k}: must be at least 1")
        self.k = int(k)
        if int(neighbours) < 0:
            raise InputError(f"neighbours={neighbours}: must be 0 (all reference images) or more")
        self.neighbours = int(neighbours)
        self.batch_size = int(batch_size)
        self._reference = {}  # reference term -> its space's N x D values for the density reference's images
        self._reference_ids = None  # ... and those images' ids
        self._known_features = None  # ({(id, latent digest): row}, features) of the density reference, when computed

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

    def set_density_reference(self, latents: np.ndarray, ids: np.ndarray, features: np.ndarray | None = None,
                              progress: bool = False) -> "DiffusionScore":
        """Images the reference terms measure distances to, by their latents (default: the calibration images'); at
        most :data:`MAX_DENSITY_REFERENCE`, a seeded sample of larger sets. ``features``: their denoiser features,
        when already computed."""
        latents, ids = np.asarray(latents), np.asarray(ids, dtype=np.int64)
        if len(latents) > MAX_DENSITY_REFERENCE:
            keep = np.sort(np.random.default_rng([self.seed, 13]).choice(len(latents), MAX_DENSITY_REFERENCE, replace=False))
            latents, ids = latents[keep], ids[keep]
            features = None if features is None else features[keep]
        if features is None and self._uses(FEATURE_TERMS):
            features = self._features(latents, progress)
        self._reference = {term: torch.from_numpy(term_space(term, latents, features))
                           for term in REFERENCE_TERMS if term in self.terms}
        self._reference_ids = torch.as_tensor(ids)
        if features is not None:  # the calibration and scored images of a self-calibrated scope are among them
            keys = zip(ids.tolist(), latent_digests(latents))
            self._known_features = ({key: row for row, key in enumerate(keys)}, np.asarray(features, np.float32))
        return self

    def _uses(self, terms) -> bool:
        return any(t in self.terms for t in terms)

    def _uses_reference_latents(self) -> bool:
        return self._uses(REFERENCE_TERMS)

    def _needs_features(self) -> bool:
        return bool(self.neighbours) or self._uses(FEATURE_TERMS)

    def _features(self, latents: np.ndarray, progress: bool = False) -> np.ndarray:
        return self.reconstructor.denoiser.features(latents, batch_size=max(self.batch_size, 64), progress=progress)

    def _features_for(self, latents, ids) -> np.ndarray | None:
        """The images' denoiser features when a term or the neighbour calibration needs them; those of images in the
        density reference (the same id and latent) are reused rather than computed again."""
        if latents is None or not self._needs_features():
            return None
        if self._known_features is None or ids is None:
            return self._features(latents)
        index, known = self._known_features
        rows = np.array([index.get(key, -1) for key in zip(np.asarray(ids).tolist(), latent_digests(latents))], np.int64)
        out = np.empty((len(rows), *known.shape[1:]), dtype=np.float32)
        out[rows >= 0] = known[rows[rows >= 0]]
        if (rows < 0).any():
            out[rows < 0] = self._features(np.asarray(latents)[rows < 0])
        return out

    def fit(self, reference: Batch) -> "DiffusionScore":
        return self.fit_errors(self.measure(reference), reference.latents, reference.ids)

    def fit_errors(self, errors: LevelErrors, latents: np.ndarray | None = None, ids: np.ndarray | None = None) -> "DiffusionScore":
        """Per-level, per-position statistics and each term's reference distribution from the reference's errors
        (and latents, for the ``density`` and ``style`` terms)."""
        if len(errors.maps) < 2:
            raise InputError(f"diffusion score: calibration needs at least 2 reference images, got {len(errors.maps)}")
        if self._uses_reference_latents() or self.neighbours:
            if latents is None:
                raise InputError("diffusion score: the reference terms and neighbour calibration need the "
                                 "reference images' latents")
            ids = np.arange(len(latents)) if ids is None else np.asarray(ids, dtype=np.int64)
        features = self._features_for(latents, ids)
        if not self._reference and self._uses_reference_latents():
            self.set_density_reference(latents, ids, features)
        maps = self._smoothed(errors.maps)
        location, scale = robust_location_scale(maps)  # L x h x w each
        sigma = self.smoothing * min(scale.shape[-2:])
        scale = smooth(torch.from_numpy(scale.astype(np.float32)), sigma).numpy()
        floor = self.floor * np.sqrt(np.mean(scale.reshape(len(scale), -1) ** 2, axis=1))
        self.map_location_ = location.astype(np.float32)
        self.map_scale_ = np.maximum(np.sqrt(scale**2 + floor[:, None, None] ** 2), 1e-12).astype(np.float32)
        self.map_floor_ = np.maximum(floor, 1e-12).astype(np.float32)
        if self.neighbours:
            self.map_reference_ = maps.astype(np.float32)
            self.map_reference_features_ = np.ascontiguousarray(features.reshape(len(maps), -1), dtype=np.float32)
            self.map_reference_ids_ = np.asarray(ids, dtype=np.int64)
        self.term_location_, self.term_scale_ = {}, {}
        raw = self._raw_terms(errors, self._zmaps(maps, features, ids).mean(axis=1), latents, ids, features)
        for name, values in raw.items():
            self.term_location_[name], self.term_scale_[name] = robust_location_scale(np.asarray(values, np.float64))
        self.term_reference_ = {name: np.sort(values) for name, values in self._terms(raw).items()}
        return self

    def calibration(self) -> dict[str, np.ndarray]:
        """The fitted state as plain arrays (stored beside the scores; no pickles)."""
        out = {"map_location": self.map_location_, "map_scale": self.map_scale_, "map_floor": self.map_floor_}
        if self.neighbours:
            out.update(map_reference=self.map_reference_, map_reference_features=self.map_reference_features_,
                       map_reference_ids=self.map_reference_ids_)
        for name in self.term_location_:
            out[f"term_location/{name}"] = np.asarray(self.term_location_[name], dtype=np.float64)
            out[f"term_scale/{name}"] = np.asarray(self.term_scale_[name], dtype=np.float64)
        for name, values in self.term_reference_.items():
            out[f"term_reference/{name}"] = values
        for term, values in self._reference.items():
            out[REFERENCE_KEYS[term]] = values.numpy()
        if self._reference:
            out["density_ids"] = self._reference_ids.numpy()
        return out

    def load_calibration(self, arrays: dict[str, np.ndarray]) -> "DiffusionScore":
        self.map_location_ = np.asarray(arrays["map_location"], dtype=np.float32)
        self.map_scale_ = np.asarray(arrays["map_scale"], dtype=np.float32)
        if self.map_location_.shape[0] != len(self.levels):
            raise InputError(f"stored calibration has {self.map_location_.shape[0]} levels, the scorer {len(self.levels)}")
        if self.neighbours:
            if "map_reference_features" not in arrays:  # none, or the latents of calibrations before the features
                raise InputError("stored calibration has no reference features for neighbour calibration; score again")
            self.map_floor_ = np.asarray(arrays["map_floor"], dtype=np.float32)
            self.map_reference_ = np.asarray(arrays["map_reference"], dtype=np.float32)
            self.map_reference_features_ = np.asarray(arrays["map_reference_features"], dtype=np.float32)
            self.map_reference_ids_ = np.asarray(arrays["map_reference_ids"], dtype=np.int64)
        pick = lambda prefix: {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith(prefix)}  # noqa: E731
        self.term_location_, self.term_scale_ = pick("term_location/"), pick("term_scale/")
        self.term_reference_ = pick("term_reference/")
        self._reference = {}
        for term in (t for t in REFERENCE_TERMS if t in self.terms):
            if REFERENCE_KEYS[term] not in arrays:
                raise InputError(f"stored calibration has no reference for the {term} term; score again")
            self._reference[term] = torch.as_tensor(np.asarray(arrays[REFERENCE_KEYS[term]], np.float32))
        if self._reference:
            self._reference_ids = torch.as_tensor(np.asarray(arrays["density_ids"], np.int64))
        return self

    # ------------------------------------------------------------------ scoring

    def _zmaps(self, maps: np.ndarray, features=None, ids=None) -> np.ndarray:
        """N x L x h x w smoothed error maps -> z-maps against the reference (its images nearest each image's
        denoiser ``features`` when ``neighbours`` is set and the reference has more images than that)."""
        if not self.neighbours or len(self.map_reference_) <= self.neighbours:
            return (maps - self.map_location_[None]) / self.map_scale_[None]
        if features is None:
            raise InputError("diffusion score: neighbour calibration needs the scored images' latents")
        reference = torch.from_numpy(self.map_reference_)
        nearest = nearest_rows(np.asarray(features), np.arange(len(maps)) if ids is None else ids,
                               torch.from_numpy(self.map_reference_features_), torch.from_numpy(self.map_reference_ids_),
                               self.neighbours)
        floor = torch.from_numpy(self.map_floor_)[None, :, None, None] ** 2
        out = np.empty(maps.shape, dtype=np.float32)
        for start in range(0, len(maps), 64):
            near = reference[torch.from_numpy(nearest[start:start + 64])]  # B x neighbours x L x h x w
            location = median(near, dim=1)
            scale = MAD_TO_SIGMA * median((near - location[:, None]).abs_(), dim=1)
            chunk = torch.from_numpy(np.ascontiguousarray(maps[start:start + 64], dtype=np.float32))
            out[start:start + 64] = ((chunk - location) / (scale**2 + floor).sqrt()).numpy()
        return out

    def _raw_terms(self, errors: LevelErrors, heat: np.ndarray, latents=None, ids=None, features=None) -> dict[str, np.ndarray]:
        """Raw (unstandardised) values of every term part, per image (``heat``: the N x h x w heatmaps)."""
        raw = {f"global/{level_label(t)}": errors.maps[:, i].mean(axis=(1, 2)).astype(np.float64) for i, t in enumerate(self.levels)}
        raw.update({f"latent/{level_label(t)}": errors.latent[:, i].astype(np.float64) for i, t in enumerate(self.levels) if t > 0})
        raw["local"] = top_k_mean(torch.from_numpy(np.ascontiguousarray(heat)), self.top_k).numpy().astype(np.float64)
        if latents is not None:
            ids = np.arange(len(latents)) if ids is None else ids
            for term, reference in self._reference.items():
                raw[term] = knn_distance(term_space(term, latents, features), ids, reference, self._reference_ids, self.k)
        return raw

    def _terms(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each term as a robust z-score (levels of ``global`` and ``latent`` averaged after z-scoring)."""
        z = {name: standardise(values, self.term_location_[name], self.term_scale_[name]) for name, values in raw.items()}
        terms = {name: z[name] for name in ("local", *REFERENCE_TERMS) if name in z}
        for kind in ("global", "latent"):
            names = [k for k in z if k.startswith(kind + "/")]
            if names:
                terms[kind] = np.mean([z[k] for k in names], axis=0)
        terms.update({k: v for k, v in z.items() if "/" in k})
        return terms

    def heatmaps(self, errors: LevelErrors, latents: np.ndarray | None = None, ids: np.ndarray | None = None,
                 features: np.ndarray | None = None) -> np.ndarray:
        """N x h x w mean z-map over levels (``features``: the images' denoiser features, computed when not given)."""
        if features is None:
            features = self._features_for(latents, ids)
        return self._zmaps(self._smoothed(errors.maps), features, ids).mean(axis=1)

    def score_errors(self, errors: LevelErrors, latents: np.ndarray | None = None, ids: np.ndarray | None = None) -> Scores:
        if (self._uses_reference_latents() or self.neighbours) and latents is None:
            raise InputError("diffusion score: the reference terms and neighbour calibration need the scored "
                             "images' latents")
        features = self._features_for(latents, ids)
        heat = self.heatmaps(errors, latents, ids, features)
        terms = self._terms(self._raw_terms(errors, heat, latents, ids, features))
        surprise = {name: tail_surprise(terms[name], self.term_reference_[name]) for name in self.terms if name in terms}
        if len(surprise) != len(self.terms):
            raise InputError(f"diffusion score: terms {self.terms} but the latent error needs a level above 0")
        score = np.max(np.stack(list(surprise.values())), axis=0)
        parts = {name: terms[name] for name in TERMS if name in terms}
        parts.update({f"{SURPRISE_PREFIX}{name}": values for name, values in surprise.items()})  # the score is their max
        for i, t in enumerate(self.levels):  # per-level parts: each level's own z-scored errors, averaged
            own = [terms[f"global/{level_label(t)}"]] + ([terms[f"latent/{level_label(t)}"]] if t > 0 else [])
            parts[level_label(t)] = np.mean(own, axis=0)
        return Scores(score.astype(np.float64), heat.astype(np.float32), {k: np.asarray(v, np.float64) for k, v in parts.items()})

    def score(self, batch: Batch) -> Scores:
        return self.score_errors(self.measure(batch), batch.latents, batch.ids)

    def calls_per_image(self) -> dict[str, int]:
        """Model calls per scored image: the reconstructions', plus one denoiser call for its features."""
        calls = dict(self.reconstructor.calls_per_image())
        calls["denoiser"] = calls.get("denoiser", 0) + int(self._needs_features())
        return calls

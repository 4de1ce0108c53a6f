"""``LatentProjection``: UMAP of latents with PCA first, a reusable kNN graph, and a way back.

    proj = LatentProjection(n_neighbors=15, min_dist=0.1, random_state=0)
    xy = proj.fit_transform(latents)           # N x C x h x w (float16 memmaps welcome) -> N x 2
    proj.transform(new_latents)                # place latents that were not in the fit
    proj.inverse_transform([[3.0, 4.5]])       # a latent for a map location (decode it to see)
    proj.kneighbors(some_latents, 5)           # nearest real training latents

The fitted state is NumPy arrays and numbers only (:meth:`save` / :meth:`load`
write ``.npy`` + JSON): ``transform`` is rebuilt from the stored reduced
training points (exact kNN against them, UMAP's membership weights, start at
the weighted mean of the neighbours' map positions, then a few epochs of
UMAP's optimisation against the fixed map), as is ``inverse_transform``.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import InputError
from ..fileio import load_npy, read_json, write_json, write_npy
from . import layout
from .index import NeighbourIndex
from .jit import is_warm, load_umap, mark_warm
from .neighbors import METRICS, exact_search
from .reduce import DEFAULT_MEMORY_LIMIT

log = logging.getLogger(__name__)

INITS = ("spectral", "pca", "random")
INVERSE_METHODS = ("blend", "umap")
LAYOUT_VARIANT = "layout-3"
_WARMED_UP = False
DEFAULT_EPOCHS = 200
MAX_EPOCHS = 100_000
WARM_START_EPOCHS = 60  # epochs for a layout that starts from another map's coordinates
WARM_START_LEARNING_RATE = 0.5  # times learning_rate: an organised start needs no large first steps
MODEL_FILE = "projection.json"
INT32_MIN, INT32_MAX = np.iinfo(np.int32).min + 1, np.iinfo(np.int32).max - 1


class Steps:
    """Progress through named stages: a one-line tqdm status plus timings per stage."""

    def __init__(self, progress: bool, desc: str = "project"):
        self.desc = desc
        self.bar = tqdm(total=None, desc=desc, bar_format="{desc} [{elapsed}]", disable=not progress, leave=False)
        self.seconds: dict[str, float] = {}
        self._current: str | None = None
        self._started = time.perf_counter()

    def __call__(self, label: str) -> None:
        self._close_current()
        self._current = label
        self._started = time.perf_counter()
        log.info("project: %s", label)
        self.bar.set_description_str(f"{self.desc}: {label}", refresh=True)

    def _close_current(self) -> None:
        if self._current is not None:
            self.seconds[self._current] = round(time.perf_counter() - self._started, 3)
            self._current = None

    def close(self) -> dict[str, float]:
        self._close_current()
        self.bar.close()
        return self.seconds


class LatentProjection:
    """UMAP projection of latents (any N x ... array), PCA-reduced first when wide.

    Parameters
    ----------
    n_components : 2 or 3, map dimensions.
    n_neighbors, min_dist, spread, learning_rate, negative_sample_rate : as in :class:`umap.UMAP`.
    metric : ``euclidean``, ``cosine`` or ``correlation``, measured in the reduced (PCA) space.
    pca_components : reduce latents with more values than this to this many principal components
        first (``None`` or 0: never).
    n_epochs : layout epochs; default 200 (umap-learn uses 500 below 10,000 points; on the 5,000-point
        benchmark set 200 epochs came within 0.001 trustworthiness of it), or 60 when ``init`` is an array.
    init : ``spectral`` | ``pca`` | ``random`` | an N x n_components array: a warm start from another
        map's coordinates, which also halves the learning rate (the start is already organised).
    random_state : seed: the same seed gives the same map (on any number of threads); ``None``: a fresh one.
    inverse_method : ``blend`` (UMAP-weighted blend of the real latents nearest on the map; robust
        outside the map's hull) or ``umap`` (umap-learn's inverse_transform optimisation in the reduced space).
    transform_epochs : optimisation epochs when placing new points (``None``: umap-learn's rule, 0: none).

    Attributes
    ----------
    embedding_ : N x n_components float32 map coordinates.
    index_ : :class:`NeighbourIndex` with the PCA state, reduced training points and kNN graph.
    latents_ : the training latents (kept by reference, for ``inverse_transform``; may be None after ``load``).
    latent_shape_ : shape of one latent.
    a_, b_ : UMAP's curve parameters for ``min_dist`` / ``spread``.
    n_neighbors_ : neighbours actually used (at most N - 1).
    seconds_ : wall time of each fitting stage.
    """

    def __init__(self, n_components: int = 2, n_neighbors: int = 15, min_dist: float = 0.1, metric: str = "euclidean",
                 pca_components: int | None = 50, n_epochs: int | None = None, init="spectral", spread: float = 1.0,
                 learning_rate: float = 1.0, negative_sample_rate: int = 5, random_state: int | None = None,
                 inverse_method: str = "blend", transform_epochs: int | None = None,
                 memory_limit: int = DEFAULT_MEMORY_LIMIT, progress: bool = False):
        self.n_components = n_components
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.metric = metric
        self.pca_components = pca_components
        self.n_epochs = n_epochs
        self.init = init
        self.spread = spread
        self.learning_rate = learning_rate
        self.negative_sample_rate = negative_sample_rate
        self.random_state = random_state
        self.inverse_method = inverse_method
        self.transform_epochs = transform_epochs
        self.memory_limit = memory_limit
        self.progress = progress

    # ------------------------------------------------------------------ parameters

    def _validate(self, n_samples: int | None = None) -> None:
        if self.n_components not in (2, 3):
            raise InputError(f"n_components {self.n_components!r}: maps have 2 or 3 dimensions")
        if not isinstance(self.n_neighbors, (int, np.integer)) or self.n_neighbors < 2:
            raise InputError(f"n_neighbors {self.n_neighbors!r}: must be a whole number of at least 2")
        if not 0.0 <= float(self.min_dist) <= float(self.spread):
            raise InputError(f"min_dist {self.min_dist!r}: must be between 0 and spread ({self.spread})")
        if self.metric not in METRICS:
            raise InputError(f"metric {self.metric!r}: choose one of {', '.join(METRICS)}")
        if self.pca_components is not None and (not isinstance(self.pca_components, (int, np.integer)) or self.pca_components < 0):
            raise InputError(f"pca_components {self.pca_components!r}: must be a whole number (0 or None: no PCA)")
        if self.n_epochs is not None and (not isinstance(self.n_epochs, (int, np.integer)) or not 1 <= self.n_epochs <= MAX_EPOCHS):
            raise InputError(f"n_epochs {self.n_epochs!r}: must be a whole number from 1 to {MAX_EPOCHS:,}")
        if self.random_state is not None and (not isinstance(self.random_state, (int, np.integer))
                                              or not 0 <= self.random_state < 2**32):
            raise InputError(f"seed {self.random_state!r}: must be a whole number from 0 to 2**32 - 1")
        if self.inverse_method not in INVERSE_METHODS:
            raise InputError(f"inverse_method {self.inverse_method!r}: choose one of {', '.join(INVERSE_METHODS)}")
        if isinstance(self.init, str):
            if self.init not in INITS:
                raise InputError(f"init {self.init!r}: choose one of {', '.join(INITS)} or give starting coordinates")
        elif n_samples is not None:
            shape = np.shape(self.init)
            if shape != (n_samples, self.n_components):
                raise InputError(f"init coordinates have shape {shape}; need ({n_samples}, {self.n_components})")
        if n_samples is not None and n_samples < self.n_components + 2:
            raise InputError(f"{n_samples} latents: a map needs at least {self.n_components + 2}")

    @property
    def warm_start(self) -> bool:
        return not isinstance(self.init, str)

    def layout_epochs(self, n_samples: int) -> int:
        if self.n_epochs is not None:
            return int(self.n_epochs)
        return WARM_START_EPOCHS if self.warm_start else DEFAULT_EPOCHS

    # ------------------------------------------------------------------ fitting

    def fit(self, X, y=None, *, index: NeighbourIndex | None = None, steps: Steps | None = None,
            layout=None) -> "LatentProjection":
        """Fit the map. ``index`` reuses a :class:`NeighbourIndex` built on the same latents earlier;
        ``layout`` (a callable: reduced training points -> coordinates, such as cuML's UMAP) replaces our layout."""
        latents = X if isinstance(X, np.ndarray) else np.asarray(X)
        if latents.ndim < 2:
            raise InputError(f"latents of shape {latents.shape}: need N x ... (one row per image)")
        self._validate(len(latents))
        own_steps = steps is None
        steps = steps or Steps(self.progress)
        try:
            k = min(int(self.n_neighbors), len(latents) - 1)
            if index is None or not self._index_fits(index, len(latents), k):
                index = NeighbourIndex.build(latents, k, self.metric, self.pca_components, self._seed(), self.memory_limit, self.progress, steps)
            self.index_ = index
            self.latents_ = latents
            self.latent_shape_ = tuple(latents.shape[1:])
            self.n_features_in_ = int(np.prod(self.latent_shape_))
            self.n_neighbors_ = k
            self.embedding_ = self._layout(index, k, steps) if layout is None else self._external_layout(layout, index, steps)
        finally:
            if own_steps:
                self.seconds_ = steps.close()
        return self

    def fit_transform(self, X, y=None, **kwargs) -> np.ndarray:
        return self.fit(X, y, **kwargs).embedding_

    def _index_fits(self, index: NeighbourIndex, n_samples: int, k: int) -> bool:
        wanted_pca = self.pca_components or None
        has_pca = index.pca.n_components if index.pca is not None else None
        return index.n_samples == n_samples and index.metric == self.metric and index.k >= k and (
            has_pca == wanted_pca or (has_pca is None and index.reduced.shape[1] <= (wanted_pca or np.inf))
        )

    def _seed(self) -> int | None:
        return None if self.random_state is None else int(self.random_state)

    def _layout(self, index: NeighbourIndex, k: int, steps: Steps) -> np.ndarray:
        warm = is_warm(LAYOUT_VARIANT)
        steps("loading UMAP" if warm else "compiling UMAP (first run only)")
        umap = load_umap()
        _warm_up(umap)
        if not warm:
            mark_warm(LAYOUT_VARIANT)
        n_epochs = self.layout_epochs(index.n_samples)
        self.a_, self.b_ = (float(v) for v in umap.umap_.find_ab_params(self.spread, self.min_dist))
        graph = fuzzy_graph(umap, index, k, self.metric, n_epochs)
        seed = self._seed()
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        if not self.warm_start:
            steps(f"initialising ({self.init})")
        start = self._initial_coordinates(umap, index, graph, seed)
        how = "warm start" if self.warm_start else f"{self.init} init"
        steps(f"laying out ({how}, {n_epochs} epochs)")
        with tqdm(total=n_epochs, desc="laying out", unit="epoch", disable=not self.progress, leave=False) as bar:
            rate = self.learning_rate * (WARM_START_LEARNING_RATE if self.warm_start else 1.0)
            return layout.optimise(start, None, graph.row, graph.col, graph.data, n_epochs, self.a_, self.b_, seed,
                                   rate, self.negative_sample_rate, on_epoch=lambda _: bar.update())

    def _external_layout(self, layout, index: NeighbourIndex, steps: Steps) -> np.ndarray:
        umap = load_umap()
        self.a_, self.b_ = (float(v) for v in umap.umap_.find_ab_params(self.spread, self.min_dist))
        steps(f"laying out ({getattr(layout, '__qualname__', type(layout).__name__)})")
        embedding = np.ascontiguousarray(layout(index.reduced), dtype=np.float32)
        if embedding.shape != (index.n_samples, self.n_components):
            raise ValueError(f"layout returned shape {embedding.shape}, not ({index.n_samples}, {self.n_components})")
        return embedding

    def _initial_coordinates(self, umap, index: NeighbourIndex, graph, seed: int) -> np.ndarray:
        rng = np.random.RandomState(seed % (2**32))
        if self.warm_start:
            start = np.array(self.init, dtype=np.float32)
            if len(np.unique(start, axis=0)) < len(start):  # coincident points would never separate
                start += rng.normal(scale=1e-4 * float(np.ptp(start)), size=start.shape).astype(np.float32)
            return start
        if self.init == "random":
            return rng.uniform(-10.0, 10.0, size=(index.n_samples, self.n_components)).astype(np.float32)
        if self.init == "pca":
            from sklearn.decomposition import PCA

            coords = PCA(self.n_components, random_state=seed % (2**32)).fit_transform(index.reduced)
        else:
            coords = _quiet(umap.spectral.spectral_layout, index.reduced, graph.tocsr(), self.n_components, rng, self.metric)
        coords = np.asarray(coords, np.float64) * (10.0 / max(np.abs(coords).max(), 1e-12))
        return (coords + rng.normal(scale=1e-4, size=coords.shape)).astype(np.float32)

    # ------------------------------------------------------------------ new points onto the map

    def transform(self, X) -> np.ndarray:
        """Place latents that were not in the fit onto the map (M x ... -> M x n_components)."""
        reduced = self._reduce(X)
        indices, distances = exact_search(reduced, self.index_.reduced, self.n_neighbors_, self.metric)
        return self.place(indices, distances)

    def place(self, indices: np.ndarray, distances: np.ndarray) -> np.ndarray:
        """Map positions for points given their training neighbours (as umap-learn's transform does)."""
        load_umap()
        from umap.umap_ import smooth_knn_dist

        weights = _memberships(smooth_knn_dist, indices, distances, self.n_neighbors_, local_connectivity=0.0)
        start = _weighted_mean(self.embedding_, indices, weights)
        n_epochs = self.transform_epochs if self.transform_epochs is not None else (100 if len(indices) <= 10000 else 30)
        if n_epochs == 0:
            return start
        rows = np.repeat(np.arange(len(indices)), indices.shape[1])
        cols, vals = indices.ravel().astype(np.int64), weights.ravel()
        keep = (vals >= vals.max() / n_epochs) & (cols >= 0)  # as umap-learn: drop edges too weak to be sampled
        return layout.optimise(start, self.embedding_, rows[keep], cols[keep], vals[keep], n_epochs, self.a_, self.b_,
                               self._seed() or 0, self.learning_rate / 4.0, self.negative_sample_rate)

    def kneighbors(self, X=None, n_neighbors: int | None = None, return_distance: bool = True):
        """Nearest training latents of ``X`` (default: of the training points, themselves excluded).

        Returns ``(distances, indices)`` (or ``indices``), nearest first; indices are training rows.
        """
        n = int(n_neighbors or self.n_neighbors_)
        if X is None:
            if self.index_.k > n:
                indices, distances = self.index_.knn_indices[:, 1 : n + 1], self.index_.knn_distances[:, 1 : n + 1]
            else:
                reduced = self.index_.reduced
                indices, distances = exact_search(reduced, reduced, n + 1, self.metric, same_set=True)
                indices, distances = indices[:, 1:], distances[:, 1:]
        else:
            indices, distances = exact_search(self._reduce(X), self.index_.reduced, n, self.metric)
        return (distances, indices) if return_distance else indices

    def _reduce(self, X) -> np.ndarray:
        self._check_fitted()
        latents = np.asarray(X)
        if latents.shape == self.latent_shape_:
            latents = latents[None]
        if latents.shape[1:] != self.latent_shape_ and int(np.prod(latents.shape[1:])) != self.n_features_in_:
            raise InputError(f"latents of shape {latents.shape}: this map was fitted on latents of shape {self.latent_shape_}")
        return self.index_.reduce(latents)

    # ------------------------------------------------------------------ points off the map

    def neighbours_on_map(self, points, n_neighbors: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The training points nearest to map locations: (distances, indices)."""
        self._check_fitted()
        points = self._check_points(points)
        if getattr(self, "_tree", None) is None:
            from scipy.spatial import cKDTree

            self._tree = cKDTree(self.embedding_.astype(np.float64))
        k = min(int(n_neighbors or self.n_neighbors_), len(self.embedding_))
        distances, indices = self._tree.query(points, k=k)
        return np.asarray(distances, np.float32).reshape(len(points), k), np.asarray(indices, np.int64).reshape(len(points), k)

    def inverse_transform(self, points) -> np.ndarray:
        """Latents for map locations (M x n_components -> M x latent shape), by ``inverse_method``."""
        points = self._check_points(points)
        if self.inverse_method == "umap":
            latents = self._inverse_umap(points)
        else:
            latents = self._inverse_blend(points)
        return latents.reshape(len(points), *self.latent_shape_)

    def _inverse_blend(self, points: np.ndarray) -> np.ndarray:
        if getattr(self, "latents_", None) is None:
            raise InputError("inverse_transform with method 'blend' needs the training latents; load the projection with latents=")
        from umap.umap_ import smooth_knn_dist

        load_umap()
        distances, indices = self.neighbours_on_map(points)
        weights = _memberships(smooth_knn_dist, indices, distances, indices.shape[1], local_connectivity=1.0)
        weights /= weights.sum(axis=1, keepdims=True)
        rows = np.unique(indices)
        lookup = np.searchsorted(rows, indices)
        real = np.asarray(self.latents_[rows], np.float32).reshape(len(rows), -1)
        return np.einsum("mk,mkd->md", weights, real[lookup])

    def _inverse_umap(self, points: np.ndarray) -> np.ndarray:
        """umap-learn's inverse_transform rebuilt on the stored arrays, in the reduced space."""
        umap = load_umap()
        from umap.umap_ import make_epochs_per_sample, smooth_knn_dist

        reduced = self.index_.reduced
        k = min(reduced.shape[1], len(reduced))  # umap-learn uses min(n_features, n_samples) map neighbours
        distances, indices = self.neighbours_on_map(points, k)
        weights = 1.0 / (1.0 + self.a_ * distances.astype(np.float64) ** (2 * self.b_))
        weights /= weights.sum(axis=1, keepdims=True)
        start = np.einsum("mk,mkd->md", weights, reduced[indices]).astype(np.float32)
        train_dist = self.index_.knn_distances[:, : self.n_neighbors_].astype(np.float32)
        sigmas, rhos = smooth_knn_dist(np.ascontiguousarray(train_dist), float(self.n_neighbors_))
        n_epochs = 100 if len(points) <= 10000 else 30
        rows = np.repeat(np.arange(len(points), dtype=np.int32), k)
        vals = weights.ravel().astype(np.float32)
        out = umap.layouts.optimize_layout_inverse(
            start, reduced, rows, indices.ravel().astype(np.int32), vals, sigmas.astype(np.float32), rhos.astype(np.float32),
            n_epochs, len(reduced), make_epochs_per_sample(vals, n_epochs), self.a_, self.b_, self._rng_state(), 1.0,
            self.learning_rate / 4.0, self.negative_sample_rate, umap.distances.named_distances_with_gradients[self.metric], (),
        )
        return self.index_.pca.inverse_transform(out) if self.index_.pca is not None else out

    def _check_points(self, points) -> np.ndarray:
        self._check_fitted()
        points = np.atleast_2d(np.asarray(points, np.float64))
        if points.ndim != 2 or points.shape[1] != self.embedding_.shape[1]:
            raise InputError(f"map locations of shape {points.shape}: need M x {self.embedding_.shape[1]}")
        if not np.isfinite(points).all():
            raise InputError("map locations must be finite numbers")
        return points

    # ------------------------------------------------------------------ helpers

    def _check_fitted(self) -> None:
        if getattr(self, "embedding_", None) is None:
            raise InputError("this LatentProjection is not fitted yet; call fit() or load() first")

    def _rng_state(self) -> np.ndarray:
        rng = np.random.RandomState(self.random_state if self.random_state is not None else None)
        return rng.randint(INT32_MIN, INT32_MAX, 3).astype(np.int64)

    def get_params(self) -> dict:
        """Constructor parameters as JSON-friendly values (``init`` arrays become ``"array"``)."""
        names = ("n_components", "n_neighbors", "min_dist", "metric", "pca_components", "n_epochs", "spread",
                 "learning_rate", "negative_sample_rate", "random_state", "inverse_method", "transform_epochs")
        params = {name: getattr(self, name) for name in names}
        params["init"] = self.init if isinstance(self.init, str) else "array"
        return params

    def fitted_state(self) -> dict:
        return {"a": self.a_, "b": self.b_, "n_neighbors_used": self.n_neighbors_, "latent_shape": list(self.latent_shape_)}

    @classmethod
    def from_parts(cls, params: dict, state: dict, index: NeighbourIndex, embedding: np.ndarray, latents=None) -> "LatentProjection":
        """Rebuild a fitted projection from stored parameters, index and coordinates."""
        params = {key: value for key, value in params.items() if key in cls.__init__.__code__.co_varnames}
        if params.get("init") == "array":
            params["init"] = "spectral"  # the starting coordinates are not needed after fitting
        model = cls(**params)
        model.index_ = index
        model.embedding_ = np.ascontiguousarray(embedding, dtype=np.float32)
        model.a_, model.b_ = float(state["a"]), float(state["b"])
        model.n_neighbors_ = int(state["n_neighbors_used"])
        model.latent_shape_ = tuple(state["latent_shape"])
        model.n_features_in_ = int(np.prod(model.latent_shape_))
        model.latents_ = latents
        if len(embedding) != index.n_samples:
            raise ValueError(f"{len(embedding)} map points but the index holds {index.n_samples}")
        return model

    def save(self, folder: str | Path) -> Path:
        """Write the fitted state as ``.npy`` files and ``projection.json`` (no pickle)."""
        self._check_fitted()
        folder = Path(folder)
        self.index_.save(folder / "index")
        write_npy(folder / "embedding.npy", self.embedding_)
        write_json(folder / MODEL_FILE, {"params": self.get_params(), "state": self.fitted_state()})
        return folder

    @classmethod
    def load(cls, folder: str | Path, latents=None) -> "LatentProjection":
        """Load what :meth:`save` wrote; pass the training ``latents`` to enable the ``blend`` inverse."""
        folder = Path(folder)
        meta = read_json(folder / MODEL_FILE)
        index, _ = NeighbourIndex.load(folder / "index")
        return cls.from_parts(meta["params"], meta["state"], index, load_npy(folder / "embedding.npy"), latents)


def _memberships(smooth_knn_dist, indices: np.ndarray, distances: np.ndarray, k: int, local_connectivity: float) -> np.ndarray:
    """UMAP's fuzzy membership of each neighbour: exp(-(d - rho) / sigma), 1 for the nearest."""
    distances = np.ascontiguousarray(distances, dtype=np.float32)
    sigmas, rhos = smooth_knn_dist(distances, float(k), local_connectivity=float(local_connectivity))
    weights = np.exp(-np.maximum(distances - rhos[:, None], 0.0) / np.maximum(sigmas[:, None], 1e-12))
    weights[indices < 0] = 0.0
    return weights.astype(np.float32)


def _weighted_mean(positions: np.ndarray, indices: np.ndarray, weights: np.ndarray) -> np.ndarray:
    total = weights.sum(axis=1, keepdims=True)
    safe = np.where(total > 0, weights / np.where(total > 0, total, 1.0), 0.0)
    safe[total[:, 0] <= 0, 0] = 1.0  # no usable weight: sit on the nearest neighbour
    return np.einsum("mk,mkc->mc", safe, positions[np.maximum(indices, 0)]).astype(np.float32)


def fuzzy_graph(umap, index: NeighbourIndex, k: int, metric: str, n_epochs: int):
    """UMAP's fuzzy graph from the cached kNN, with edges too weak to be sampled in ``n_epochs`` dropped (COO)."""
    graph, _, _ = umap.umap_.fuzzy_simplicial_set(
        index.reduced, k, np.random.RandomState(0), metric,
        knn_indices=index.knn_indices[:, :k].copy(), knn_dists=index.knn_distances[:, :k].copy(),
    )
    graph = graph.tocoo()
    graph.data[graph.data < graph.data.max() / float(max(n_epochs, 10))] = 0.0
    graph.eliminate_zeros()
    return graph


def _warm_up(umap) -> None:
    """Compile (or load from the disk cache) everything a layout uses, on a tiny problem, once per process."""
    global _WARMED_UP
    if _WARMED_UP:
        return
    tiny = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    indices, distances = exact_search(tiny, tiny, 8, "euclidean", same_set=True)
    index = NeighbourIndex(tiny, indices, distances, "euclidean")
    graph = fuzzy_graph(umap, index, 8, "euclidean", 11)
    layout.optimise(tiny[:, :2], None, graph.row, graph.col, graph.data, 11, 1.6, 0.9, 0)
    _WARMED_UP = True


def _quiet(function, *args):
    """Run a umap-learn call, logging instead of printing its warnings."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*knn_search_index.*")
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")
        warnings.filterwarnings("ignore", message=".*precomputed_knn.*")
        return function(*args)

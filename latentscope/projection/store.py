"""Maps in a scope: ``latentscope project`` and reloading a map to place or decode points.

=====================================  ==============================================
``maps/<name>.parquet``                ``id``, ``x``, ``y`` [, ``z``], ``fitted``
``scope.json`` ``maps.<name>``         parameters, fitted numbers (UMAP's a, b), the
                                       index it was built on, timings, quality report
``index/<metric>-pca<d>-<hash>/``      the neighbour index (see :mod:`.index`) plus
                                       ``ids.npy``: image ids in index-row order
=====================================  ==============================================

The index is keyed by the metric, the PCA size and a fingerprint of the
encoded images (ids and content hashes), so a second map of the same images
reuses it and a map made after images were added does not.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError, ScopeError
from ..fileio import load_npy, remove_unfinished_writes, write_npy
from ..scope import Scope, check_name
from .index import INDEX_FILE, NeighbourIndex
from .model import LatentProjection, Steps
from .quality import DEFAULT_SAMPLE, map_quality
from .reduce import DEFAULT_MEMORY_LIMIT
from .scale import (
    SAMPLE_SIZE,
    SAMPLE_THRESHOLD,
    TRANSFORM_BATCH,
    CumlLayout,
    check_sampling,
    cuml_umap,
    place_in_batches,
    representative_sample,
    uses_sample,
)

log = logging.getLogger(__name__)

INDEX_DIR = "index"
LIBRARIES = ("umap-learn", "pynndescent", "numba", "scikit-learn")
COORDS = ("x", "y", "z")


@dataclass
class ProjectSummary:
    """What one ``project`` run did."""

    scope: Path
    name: str
    points: int
    dims: int
    index: str
    index_reused: bool
    path: Path
    seconds: dict = field(default_factory=dict)
    quality: dict | None = None
    placed: int = 0
    sample: int = 0  # the map was fitted on this many images and the others were placed with transform

    def lines(self) -> list[str]:
        out = [f"map {self.name!r}: {self.points:,} points in {self.dims}-D -> {self.path}"]
        if self.sample:
            out.append(f"fitted on a random sample of {self.sample:,} images; the other {self.placed:,} placed with transform")
        elif self.placed:
            out.append(f"placed {self.placed:,} images added since the map was made (existing positions kept)")
        out.append(f"neighbour index {self.index}: {'reused' if self.index_reused else 'built and cached'}")
        if self.seconds:
            out.append("time: " + ", ".join(f"{label} {sec:.1f}s" for label, sec in self.seconds.items()))
        if self.quality:
            out.extend(quality_lines(self.quality))
        return out


def quality_lines(quality: dict) -> list[str]:
    sampled = f"a sample of {quality['trustworthiness_points']:,} points" if quality.get("trustworthiness_sampled") else "all points"
    lines = [f"trustworthiness (k={quality['k']}): {quality['trustworthiness']:.4f} (measured on {sampled})"]
    if "label_agreement_map" in quality:
        lines.append(
            f"kNN label agreement (k={quality['k']}, {quality['labels']} labels): map {quality['label_agreement_map']:.3f}, "
            f"latents {quality['label_agreement_latents']:.3f}, chance {quality['label_agreement_chance']:.3f}"
        )
    return lines


# ---------------------------------------------------------------------- the scope's training set


def _open(scope) -> Scope:
    return scope if isinstance(scope, Scope) else Scope(scope)


def training_set(scope: Scope) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(ids, labels, latents, fingerprint) of the encoded images, in latent-row order."""
    ok = scope.ok_manifest()
    latents = scope.latents()
    if len(ok) != len(latents):
        raise ScopeError(f"{scope.path}: manifest lists {len(ok)} encoded images but latents.npy has {len(latents)} rows")
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(ok["id"].to_numpy(np.int64)).tobytes())
    digest.update("\n".join(ok["sha256"].astype(str)).encode())
    digest.update(repr(tuple(latents.shape[1:])).encode())
    return ok["id"].to_numpy(np.int64), ok["label"].fillna("").astype(str).to_numpy(), latents, digest.hexdigest()


def index_key(metric: str, pca_components: int | None, fingerprint: str, sample: str = "") -> str:
    """Folder name of a neighbour index; it ends with the image set's fingerprint (see :func:`map_is_current`)."""
    return f"{metric}-pca{pca_components or 0}-{sample + '-' if sample else ''}{fingerprint[:16]}"


@contextlib.contextmanager
def _index_lock(scope: Scope):
    folder = scope.path / INDEX_DIR
    folder.mkdir(exist_ok=True)
    with open(folder / ".lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield folder
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_ids(folder: Path) -> np.ndarray:
    try:
        return load_npy(folder / "ids.npy")
    except (OSError, ValueError) as exc:
        raise ScopeError(f"{folder}: unreadable neighbour index ({exc}); rerun 'latentscope project' to rebuild it") from None


def _load_index(folder: Path, ids: np.ndarray) -> NeighbourIndex | None:
    if not (folder / INDEX_FILE).exists():
        return None
    index, _ = NeighbourIndex.load(folder)
    stored = _read_ids(folder)
    if not np.array_equal(stored, ids):
        raise ScopeError(f"{folder}: index rows do not match its images; delete the folder and rerun 'latentscope project'")
    return index


def _index_for(scope: Scope, model: LatentProjection, ids, latents, fingerprint: str, rebuild: bool, steps: Steps,
               sample: str = ""):
    """Load the cached neighbour index for these latents, or build and cache it. Returns (index, key, reused)."""
    key = index_key(model.metric, model.pca_components, fingerprint, sample)
    k = min(int(model.n_neighbors), len(latents) - 1)
    with _index_lock(scope) as root:
        folder = root / key
        remove_unfinished_writes(folder)  # from a build that was killed (we hold the lock)
        index = None if rebuild else _load_index(folder, ids)
        if index is not None and model._index_fits(index, len(latents), k):
            return index, key, True
        index = NeighbourIndex.build(latents, k, model.metric, model.pca_components, 0, model.memory_limit, model.progress, steps)
        steps("storing the neighbour index")
        write_npy(folder / "ids.npy", ids)
        index.save(folder, fingerprint=fingerprint)
        return index, key, False


def map_is_current(scope, name: str = "default") -> bool:
    """True when map ``name`` exists and was made from exactly the images the scope holds now."""
    scope = _open(scope)
    entry = scope.meta.get("maps", {}).get(name)
    if not entry or "index" not in entry or not (scope.path / INDEX_DIR / entry["index"] / INDEX_FILE).exists():
        return False
    try:
        scope.read_map(name)
    except (OSError, ScopeError):
        return False
    _, _, _, fingerprint = training_set(scope)
    return entry["index"].endswith(fingerprint[:16])


def prune_indexes(scope: Scope) -> list[str]:
    """Delete cached indexes that no map refers to and that are stale (their images changed)."""
    root = scope.path / INDEX_DIR
    if not root.is_dir():
        return []
    used = {entry.get("index") for entry in scope.meta.get("maps", {}).values()}
    _, _, _, fingerprint = training_set(scope)
    removed = []
    for folder in root.iterdir():
        if folder.is_dir() and folder.name not in used and not folder.name.endswith(fingerprint[:16]):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    return removed


# ---------------------------------------------------------------------- project


def project(scope, name: str = "default", *, n_neighbors: int = 15, min_dist: float = 0.1, metric: str = "euclidean",
            seed: int | None = 0, dims: int = 2, pca_components: int | None = 50, n_epochs: int | None = None,
            init: str = "spectral", warm_start: str | None = None, spread: float = 1.0, quality: bool = True,
            quality_sample: int = DEFAULT_SAMPLE, rebuild_index: bool = False, memory_limit: int = DEFAULT_MEMORY_LIMIT,
            sample_threshold: int | None = SAMPLE_THRESHOLD, sample_size: int = SAMPLE_SIZE, use_cuml: bool | None = None,
            progress: bool = True) -> ProjectSummary:
    """Make the map ``name`` of a scope's latents and store it (``maps/<name>.parquet`` + scope.json).

    ``warm_start`` names an existing map of the same images whose coordinates
    start the layout (with fewer epochs by default). The same ``seed`` gives the
    same map; ``seed=None`` draws a fresh one. With more than ``sample_threshold``
    latents (``None``: never) the map is fitted on a random sample of ``sample_size``
    and the rest are placed with ``transform`` (see :mod:`.scale`); ``use_cuml``
    (default: when installed) lays out and places with cuML's GPU UMAP.
    """
    scope = _open(scope)
    check_name(name, "map")
    if quality_sample < 1:
        raise InputError(f"quality sample {quality_sample}: must be at least 1")
    check_sampling(sample_threshold, sample_size)
    started = time.perf_counter()
    ids, labels, latents, fingerprint = training_set(scope)
    sampled = uses_sample(len(latents), sample_threshold, sample_size)
    gpu_umap = cuml_umap() if use_cuml is not False else None
    if use_cuml and gpu_umap is None:
        raise InputError("use_cuml: RAPIDS cuML is not installed here (or finds no GPU)")
    if warm_start and sampled:
        raise InputError(f"--warm-start: not available for maps of more than {sample_threshold:,} images (fitted on a sample)")
    all_ids, all_latents = ids, latents
    rows = sample_label = None
    if sampled:
        rows = representative_sample(len(latents), sample_size, seed or 0)
        ids, latents, sample_label = ids[rows], np.asarray(latents[rows]), f"sample{len(rows)}s{seed or 0}"
    elif gpu_umap is not None and use_cuml is None:
        gpu_umap = None  # cuML by default only on the large-set path; ask for it with use_cuml=True
    model = LatentProjection(
        n_components=dims, n_neighbors=n_neighbors, min_dist=min_dist, metric=metric, pca_components=pca_components,
        n_epochs=n_epochs, init=init, spread=spread, random_state=seed, memory_limit=memory_limit, progress=progress,
    )
    model._validate(len(latents))
    if warm_start:
        model.init = _warm_start_coordinates(scope, warm_start, ids, dims)
    steps = Steps(progress)
    try:
        index, key, reused = _index_for(scope, model, ids, latents, fingerprint, rebuild_index, steps, sample_label or "")
        gpu = CumlLayout(gpu_umap, model) if gpu_umap is not None else None
        model.fit(latents, index=index, steps=steps, layout=gpu.fit if gpu is not None else None)
        embedding, frame = model.embedding_, _map_frame(ids, model.embedding_)
        if sampled:
            rest = np.setdiff1d(np.arange(len(all_latents)), rows, assume_unique=True)
            steps(f"placing the other {len(rest):,} images ({'cuML' if gpu else 'transform'}, batches of {TRANSFORM_BATCH:,})")
            if gpu is not None:
                placed = gpu.place(model, all_latents, rest, progress=progress)
            else:
                placed = place_in_batches(model, all_latents, rest, progress=progress, seed=seed or 0)
            frame = pd.concat([frame, _map_frame(all_ids[rest], placed, fitted=False)]).sort_values("id", ignore_index=True)
            embedding = frame[list(COORDS[:dims])].to_numpy(np.float32)
        report = None
        if quality:
            steps("measuring quality")
            report = map_quality(all_latents, embedding, labels, sample=quality_sample, seed=seed or 0)
        steps("storing the map")
        params = {**model.get_params(), "warm_start": warm_start, "layout": "cuml" if gpu else "latentscope"}
        if sampled:
            params.update(sample_size=len(rows), sample_threshold=sample_threshold)
        path = scope.write_map(name, frame, params, index=key, state=model.fitted_state(), quality=report,
                               seconds=dict(steps.seconds), libraries=LIBRARIES)
    finally:
        seconds = steps.close()
    removed = prune_indexes(scope)
    if removed:
        log.info("removed stale neighbour indexes: %s", ", ".join(removed))
    seconds["total"] = round(time.perf_counter() - started, 3)
    return ProjectSummary(scope.path, name, len(all_ids), dims, key, reused, path, seconds, report,
                          placed=len(all_ids) - len(ids), sample=len(ids) if sampled else 0)


def _map_frame(ids: np.ndarray, embedding: np.ndarray, fitted: bool = True) -> pd.DataFrame:
    frame = pd.DataFrame({"id": ids.astype(np.int64)})
    for axis, column in zip(range(embedding.shape[1]), COORDS):
        frame[column] = embedding[:, axis].astype(np.float32)
    frame["fitted"] = fitted
    return frame


def _warm_start_coordinates(scope: Scope, name: str, ids: np.ndarray, dims: int) -> np.ndarray:
    frame = scope.read_map(name)
    fitted = frame[frame["fitted"]] if "fitted" in frame else frame
    if len(fitted) != len(ids) or not np.array_equal(fitted["id"].to_numpy(np.int64), ids):
        raise InputError(f"--warm-start {name}: that map covers other images than the scope holds now; make it again first")
    columns = [c for c in COORDS if c in fitted]
    if len(columns) != dims:
        raise InputError(f"--warm-start {name}: that map is {len(columns)}-D, not {dims}-D")
    return fitted[columns].to_numpy(np.float32)


# ---------------------------------------------------------------------- reloading a map


class RowView:
    """``latents[rows[i]]`` without copying the whole set (training rows may differ from scope rows)."""

    def __init__(self, latents: np.ndarray, rows: np.ndarray):
        self.latents, self.rows = latents, np.asarray(rows)
        self.shape = (len(self.rows), *latents.shape[1:])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        return self.latents[self.rows[index]]


def load_projection(scope, name: str = "default", latents: bool = True) -> LatentProjection:
    """A fitted :class:`LatentProjection` for a stored map; ``ids_`` holds the image id of each training row."""
    scope = _open(scope)
    entry = scope.meta.get("maps", {}).get(name)
    frame = scope.read_map(name)
    if not entry or "index" not in entry or "state" not in entry:
        raise ScopeError(f"{scope.path}: map {name!r} has no stored projection state; make it again with 'latentscope project'")
    folder = scope.inside(INDEX_DIR, str(entry["index"]), what=f"the neighbour index of map {name!r}")
    ids = _read_ids(folder) if (folder / "ids.npy").exists() else None
    index = _load_index(folder, ids) if ids is not None else None
    if index is None:
        raise ScopeError(f"{folder}: the neighbour index of map {name!r} is missing; make the map again with 'latentscope project'")
    fitted = frame[frame["fitted"]] if "fitted" in frame else frame
    if not np.array_equal(fitted["id"].to_numpy(np.int64), ids):
        raise ScopeError(f"{scope.path}: map {name!r} and its neighbour index disagree; make the map again")
    columns = [c for c in COORDS if c in fitted]
    training = None
    if latents:
        rows = scope.rows_for_ids(ids)
        all_latents = scope.latents()
        training = all_latents if np.array_equal(rows, np.arange(len(all_latents))) else RowView(all_latents, rows)
    model = LatentProjection.from_parts(entry["params"], entry["state"], index, fitted[columns].to_numpy(np.float32), training)
    model.ids_ = ids
    return model


def place_new(scope, name: str = "default", progress: bool = True) -> ProjectSummary:
    """Put images encoded after map ``name`` was made onto it with ``transform`` (existing positions stay)."""
    scope = _open(scope)
    started = time.perf_counter()
    model = load_projection(scope, name, latents=False)
    frame = scope.read_map(name)
    ok = scope.ok_manifest()
    new_ids = np.setdiff1d(ok["id"].to_numpy(np.int64), frame["id"].to_numpy(np.int64))
    kept = frame[frame["id"].isin(ok["id"])]
    steps = Steps(progress)
    if len(new_ids):
        steps(f"placing {len(new_ids):,} new images")
        coords = model.transform(scope.latents_for_ids(new_ids))
        kept = pd.concat([kept, _map_frame(new_ids, coords, fitted=False)], ignore_index=True)
    entry = scope.meta["maps"][name]
    steps("storing the map")
    path = scope.write_map(name, kept.sort_values("id").reset_index(drop=True), entry["params"],
                           **{k: v for k, v in entry.items() if k not in ("params", "versions", "time", "placed")}, placed=int(len(new_ids)))
    seconds = steps.close()
    seconds["total"] = round(time.perf_counter() - started, 3)
    return ProjectSummary(scope.path, name, len(kept), model.embedding_.shape[1], entry["index"], True, path, seconds,
                          entry.get("quality"), placed=int(len(new_ids)))


def nearest_images(projection: LatentProjection, latents, n_neighbors: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Image ids (and distances in the reduced latent space) of the real images nearest to each latent."""
    distances, rows = projection.kneighbors(latents, n_neighbors)
    return projection.ids_[rows], distances

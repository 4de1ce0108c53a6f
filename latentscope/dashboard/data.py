"""What the explorer shows, read from a scope: points of a map with their columns, images, models.

Everything here is plain Python over the library (no Dash), so callbacks stay
thin and the logic is testable without a browser. Only ids found in the
manifest are ever turned into file paths.
"""

from __future__ import annotations

import copy
import io
import logging
import os
import re
import threading
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..errors import LatentscopeError, ScopeError
from ..images import load_image
from ..metadata import matches_value
from ..scope import Scope

log = logging.getLogger(__name__)

MAX_CATEGORIES = 24
DENSITY_THRESHOLD = 1_000_000  # maps with more points show a density image, and points only once zoomed in
ZOOM_POINTS = 100_000  # ...when the view holds at most this many
ORIGINAL_MAX_SIDE = 384


def png_bytes(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


MAP_CACHES = ("clusters", "flat_latents", "_squared_norms", "projection")  # cached properties that depend on the map
COMPARISON = re.compile(r"^(?P<column>[^<>=!]+?)\s*(?P<op>>=|<=|!=|>|<|=)\s*(?P<value>.*)$")


class _SharedModels:
    """The autoencoder and the walker, loaded once and shared by the explorer's maps."""

    def __init__(self):
        self.codec = None
        self.walker = None
        self.codec_lock = threading.Lock()
        self.walker_lock = threading.Lock()


class ExplorerData:
    """A scope opened for exploring: one map, its points and the columns they can be coloured by."""

    def __init__(self, scope: Scope | str | Path, map_name: str | None = None, model: str | None = None, device: str = "auto",
                 density_threshold: int = DENSITY_THRESHOLD, zoom_points: int = ZOOM_POINTS):
        self.scope = scope if isinstance(scope, Scope) else Scope(scope)
        if model:
            from ..codec import check_scope_model

            check_scope_model(model, self.scope)
        self.density_threshold = int(density_threshold)
        self.zoom_points = int(zoom_points)
        self.model_reference = model or self.scope.model.get("reference")
        self.device = device
        self._models = _SharedModels()
        self._read_scope(map_name)

    def _read_scope(self, map_name: str | None) -> None:
        self.version = self._scope_version()
        self.map_names = self.scope.table_names("maps")
        self.score_names = self.scope.table_names("scores")
        self.map_name = map_name or (self.map_names[0] if self.map_names else None)
        if self.map_name is None:
            raise ScopeError(f"{self.scope.path}: has no map yet; run 'latentscope project {self.scope.path}' first")
        self._use_points(self._load_points(self.map_name))

    def _scope_version(self) -> tuple:
        """Changes whenever a stage writes to the scope (each records itself in scope.json; encode also rewrites
        the manifest)."""
        found = []
        for name in ("scope.json", "images.parquet"):
            try:
                stat = os.stat(self.scope.path / name)
                found.append((stat.st_mtime_ns, stat.st_size))
            except OSError:
                found.append(None)
        return tuple(found)

    def changed(self) -> bool:
        return self._scope_version() != self.version

    def reload(self) -> None:
        """Read the scope again after another process wrote to it (new scores, maps, metadata or images): the
        same map if it still exists. Models stay loaded; the walker is rebuilt, as the latents may be new."""
        self.scope.invalidate()
        self._forget(*MAP_CACHES, "_score_terms")
        with self._models.walker_lock:
            self._models.walker = None
        names = self.scope.table_names("maps")
        self._read_scope(self.map_name if self.map_name in names else None)

    # ------------------------------------------------------------------ points and columns

    def _load_points(self, map_name: str) -> pd.DataFrame:
        coords = self.scope.read_map(map_name)
        points = coords.merge(self.scope.ok_manifest(), on="id", how="inner", validate="one_to_one")
        points = points.merge(self.scope.metadata().drop(columns="label", errors="ignore"), on="id", how="left")
        for name in self.score_names:
            scores = self.scope.read_scores(name)[["id", "score"]].rename(columns={"score": f"score:{name}"})
            points = points.merge(scores, on="id", how="left")
        points["label"] = points["label"].fillna("").astype(str)
        return points.reset_index(drop=True)

    def _use_points(self, points: pd.DataFrame) -> None:
        self.points = points
        self._row_of_id = pd.Series(np.arange(len(points)), index=points["id"].to_numpy())
        self._colour_options = None  # found again from the new columns

    def for_map(self, map_name: str) -> "ExplorerData":
        """The same scope seen on another of its maps, sharing this one's models and score terms."""
        if map_name not in self.map_names:
            raise ScopeError(f"{self.scope.path}: no map named {map_name!r}")
        other = copy.copy(self)
        other._forget(*MAP_CACHES)
        other.map_name = map_name
        other.reload_points()
        return other

    def _forget(self, *cached: str) -> None:
        for name in cached:
            self.__dict__.pop(name, None)

    def reload_points(self) -> None:
        """Read the map, manifest, metadata and scores again (after a tag changed the metadata)."""
        self._use_points(self._load_points(self.map_name))

    @property
    def dense(self) -> bool:
        """Too many points to draw them all: the map is a density image, with the points of a zoomed-in view."""
        return len(self.points) > self.density_threshold

    def rows_in_view(self, view) -> np.ndarray:
        """Positions of the points inside ``view`` = [x0, x1, y0, y1] (None: all)."""
        if view is None:
            return np.arange(len(self.points))
        x0, x1, y0, y1 = view
        x, y = self.points["x"].to_numpy(), self.points["y"].to_numpy()
        inside = (x >= min(x0, x1)) & (x <= max(x0, x1)) & (y >= min(y0, y1)) & (y <= max(y0, y1))
        return np.flatnonzero(inside)

    @property
    def has_labels(self) -> bool:
        return bool((self.points["label"] != "").any())

    @property
    def default_score_column(self) -> str | None:
        columns = [f"score:{n}" for n in self.score_names]
        if "score:default" in columns:
            return "score:default"
        return columns[0] if columns else None

    def colour_options(self) -> list[dict]:
        """Columns the map can be coloured by, as dropdown options."""
        if self._colour_options is None:
            self._colour_options = self._find_colour_options()
        return self._colour_options

    def _find_colour_options(self) -> list[dict]:
        options = [{"label": "nothing", "value": "none"}]
        if self.has_labels:
            options.append({"label": "label", "value": "label"})
        options += [{"label": f"anomaly score ({c[6:]})", "value": c} for c in self.points.columns if c.startswith("score:")]
        options.append({"label": "cluster (k-means on the map)", "value": "cluster"})
        skip = {"id", "x", "y", "z", "row", "sha256", "path", "status", "error", "label", "mtime_ns"}
        options += [{"label": c, "value": c} for c in self.points.columns
                    if c not in skip and not c.startswith("score:") and not self.is_text(c)]
        return options

    def colour_values(self) -> set[str]:
        return {option["value"] for option in self.colour_options()}

    @property
    def metadata_columns(self) -> list[str]:
        """Columns of the attached metadata shown with each image (the label is shown as the label)."""
        return [c for c in self.scope.metadata().columns if c not in ("id", "label") and c in self.points]

    @property
    def tag_columns(self) -> list[str]:
        """Metadata columns that are tags (true / false), such as those made in the explorer."""
        from ..metadata import is_tag

        return [c for c in self.metadata_columns if is_tag(self.points[c].dropna())]

    def is_text(self, name: str) -> bool:
        """Free text such as captions or notes: shown with each image, too varied to colour by."""
        values = self.points[name].dropna()
        if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            return False
        return values.astype(str).nunique() > max(MAX_CATEGORIES, len(values) // 2)

    def default_colour(self) -> str:
        if self.default_score_column and not self.has_labels:
            return self.default_score_column
        return "label" if self.has_labels else "none"

    def column(self, name: str) -> pd.Series:
        if name == "cluster":
            return self.clusters
        if name not in self.points.columns:
            raise ScopeError(f"no column named {name!r} in this scope")
        return self.points[name]

    def is_categorical(self, name: str) -> bool:
        values = self.column(name)
        if name in ("label", "cluster"):
            return True
        return not pd.api.types.is_numeric_dtype(values) or values.nunique() <= MAX_CATEGORIES // 2

    @cached_property
    def clusters(self) -> pd.Series:
        from sklearn.cluster import MiniBatchKMeans

        xy = self.points[["x", "y"]].to_numpy(np.float32)
        k = int(np.clip(round(np.sqrt(len(xy) / 50)), 2, 12)) if len(xy) >= 4 else 1
        if k < 2:
            return pd.Series(["0"] * len(xy), name="cluster")
        model = MiniBatchKMeans(n_clusters=k, random_state=0, n_init=3, batch_size=4096).fit(xy)
        return pd.Series([f"c{c}" for c in model.labels_], name="cluster")

    def tag(self, name: str, ids, value: bool = True) -> int:
        """Mark (or unmark) images with tag ``name`` in the scope's metadata; returns how many carry it now."""
        from ..metadata import set_tag

        tagged = set_tag(self.scope, name, ids, value)
        self.reload_points()
        return tagged

    def find(self, text: str) -> np.ndarray:
        """Ids of the images whose file name, label or metadata contains ``text`` (any case); or, written
        ``COLUMN=VALUE`` (also ``!=``, ``<``, ``<=``, ``>``, ``>=`` for numbers) with a column the points have,
        whose value compares so (``score:default>2``, ``ink<=0.1``, ``reviewed=true``)."""
        text = (text or "").strip()
        condition = COMPARISON.match(text)
        column = condition["column"].strip() if condition else None
        if column in self.points.columns and column not in ("x", "y", "z"):
            hits = self._compare(column, condition["op"], condition["value"].strip())
        else:
            needle = text.lower()
            if not needle:
                return np.zeros(0, np.int64)
            searched = ["path", "label", *(c for c in self.metadata_columns if not pd.api.types.is_numeric_dtype(self.points[c]))]
            hits = np.zeros(len(self.points), bool)
            for name in searched:
                hits |= self.points[name].astype(str).str.lower().str.contains(needle, regex=False).fillna(False).to_numpy(bool)
        return self.points["id"].to_numpy(np.int64)[hits]

    def _compare(self, column: str, op: str, value: str) -> np.ndarray:
        values = self.points[column]
        if op in ("=", "!="):
            equal = matches_value(values, value)
            return equal if op == "=" else ~equal
        try:
            number = float(value)
        except ValueError:
            return np.zeros(len(values), bool)
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(np.float64)
        with np.errstate(invalid="ignore"):
            return {"<": numbers < number, "<=": numbers <= number, ">": numbers > number, ">=": numbers >= number}[op]

    def table_for(self, ids) -> pd.DataFrame:
        """The images' rows as a user would export them: id, file, label, map position, scores, metadata."""
        rows = self.points.iloc[self.ids_to_rows(ids)]
        internal = {"row", "sha256", "status", "error", "mtime_ns", "bytes"}
        return rows[[c for c in rows.columns if c not in internal]].rename(columns={"path": "file"})

    def ids_to_rows(self, ids) -> np.ndarray:
        ids = [int(i) for i in ids]
        known = [i for i in ids if i in self._row_of_id.index]
        return self._row_of_id.loc[known].to_numpy()

    def point(self, image_id: int) -> dict:
        rows = self.ids_to_rows([image_id])
        if not len(rows):
            raise ScopeError(f"no image with id {image_id} on this map")
        record = self.points.iloc[int(rows[0])]
        return {k: (v.item() if hasattr(v, "item") else v) for k, v in record.items()}

    @cached_property
    def _score_terms(self) -> dict[str, pd.DataFrame]:
        """Per score that combines terms (the diffusion score), their robust z-scores by image id."""
        from ..anomaly.stage import score_terms

        found = {name: score_terms(self.scope, name) for name in self.score_names}
        return {name: frame for name, frame in found.items() if frame is not None}

    def has_score_terms(self, name: str) -> bool:
        """Whether score ``name`` (or its column, ``score:NAME``) combines terms."""
        return name.removeprefix("score:") in self._score_terms

    def score_terms(self, name: str, image_id: int) -> str:
        """'gist 7.2, local 1.0, content -0.5': the terms score ``name`` (or ``score:NAME``) combined for one image,
        largest first; empty for a score without terms."""
        from ..anomaly.stage import describe_terms

        frame = self._score_terms.get(name.removeprefix("score:"))
        return describe_terms(frame.loc[image_id]) if frame is not None and image_id in frame.index else ""

    def knows(self, image_id) -> bool:
        try:
            return int(image_id) in self._row_of_id.index
        except (TypeError, ValueError):
            return False

    # ------------------------------------------------------------------ images

    def thumbnail(self, image_id: int) -> bytes | None:
        if not self.knows(image_id):
            return None
        path = self.scope.thumb_path(int(image_id))
        return path.read_bytes() if path.is_file() else None

    def original_png(self, image_id: int) -> bytes | None:
        if not self.knows(image_id):
            return None
        try:
            img = load_image(self.scope.image_path(int(image_id)))
        except LatentscopeError as exc:
            log.warning("image %s: %s", image_id, exc)
            return None
        img.thumbnail((ORIGINAL_MAX_SIDE, ORIGINAL_MAX_SIDE))
        out = io.BytesIO()
        img.save(out, format="PNG")
        return out.getvalue()

    def latents(self, ids) -> np.ndarray:
        return self.scope.latents_for_ids([int(i) for i in ids])

    @cached_property
    def flat_latents(self) -> np.ndarray:
        """Latents of the map's points as float32 N x D, in point order (for neighbour search)."""
        rows = self.points["row"].to_numpy()
        return np.asarray(self.scope.latents()[rows], dtype=np.float32).reshape(len(rows), -1)

    def neighbours(self, image_id: int, k: int = 8) -> list[int]:
        """Ids of the k nearest other images in latent space."""
        rows = self.ids_to_rows([image_id])
        if not len(rows):
            return []
        _, nearest = self.nearest_rows(self.flat_latents[rows], k + 1)
        ids = self.points["id"].to_numpy()[nearest[0]]
        return [int(i) for i in ids if int(i) != int(image_id)][:k]

    # ------------------------------------------------------------------ models (loaded on first use)

    @property
    def codec(self):
        """The autoencoder, loaded on first use (once, even when several requests ask at the same moment)."""
        models = self._models
        with models.codec_lock:
            if models.codec is None:
                from ..codec import Codec

                models.codec = Codec.from_pretrained(self.model_reference, device=self.device)
            return models.codec

    @cached_property
    def projection(self):
        """The fitted projection behind this map (for placing new latents and inverting map points), if loadable."""
        try:
            from ..projection import load_projection
        except ImportError:
            return None
        try:
            return load_projection(self.scope, self.map_name)
        except LatentscopeError as exc:
            log.warning("map %s: %s; using nearest-neighbour placement instead", self.map_name, exc)
            return None

    def map_positions(self, latents: np.ndarray, k: int = 8) -> np.ndarray:
        """Where latents sit on the map: a map point's own latent at that point; others by the projection's
        transform, else by a distance-weighted mean of their neighbours."""
        flat = np.asarray(latents, np.float32).reshape(len(latents), -1)
        distances, nearest = self.nearest_rows(flat, k)
        xy = self.points[["x", "y"]].to_numpy(np.float32)[nearest]
        if self.projection is not None:
            placed = np.asarray(self.projection.transform(np.asarray(latents, np.float32)), np.float32)[:, :2]
        else:
            weights = 1.0 / (distances + 1e-6)
            placed = ((xy * weights[..., None]).sum(1) / weights.sum(1, keepdims=True)).astype(np.float32)
        gap = np.linalg.norm(flat - self.flat_latents[nearest[:, 0]], axis=1)  # direct: the GEMM distance rounds off
        own = gap <= 1e-5 * (1.0 + np.linalg.norm(flat, axis=1))
        placed[own] = xy[own, 0]  # the transform re-optimises a position; a real image belongs where the map put it
        return placed

    @cached_property
    def _squared_norms(self) -> np.ndarray:
        return np.einsum("ij,ij->i", self.flat_latents, self.flat_latents)

    def nearest_rows(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Euclidean distances and point rows of the k nearest map points to each query latent (one GEMM)."""
        real = self.flat_latents
        k = min(k, len(real))
        squared = self._squared_norms[None, :] - 2.0 * queries @ real.T + np.einsum("ij,ij->i", queries, queries)[:, None]
        nearest = np.argpartition(squared, k - 1, axis=1)[:, :k]
        picked = np.take_along_axis(squared, nearest, axis=1)
        order = np.argsort(picked, axis=1)
        nearest, picked = np.take_along_axis(nearest, order, axis=1), np.take_along_axis(picked, order, axis=1)
        return np.sqrt(np.maximum(picked, 0.0)), nearest

    def latents_at(self, points: np.ndarray, k: int = 6) -> np.ndarray:
        """Latents for map points: the projection's inverse, else a blend of the real latents nearest on the map."""
        points = np.asarray(points, np.float32).reshape(-1, 2)
        shape = tuple(self.scope.model["latent_shape"])
        if self.projection is not None:
            return np.asarray(self.projection.inverse_transform(points), np.float32).reshape(len(points), *shape)
        xy = self.points[["x", "y"]].to_numpy(np.float32)
        real = self.flat_latents
        k = min(k, len(xy))
        out = np.empty((len(points), real.shape[1]), np.float32)
        for i, point in enumerate(points):
            distances = np.sqrt(((xy - point) ** 2).sum(1))
            nearest = np.argpartition(distances, k - 1)[:k]
            weights = 1.0 / (distances[nearest] + 1e-6) ** 2
            out[i] = (real[nearest] * weights[:, None]).sum(0) / weights.sum()
        return out.reshape(len(points), *shape)

    def warm_up(self) -> None:
        """Load the model and the neighbour-search arrays ahead of the first walk (which would otherwise take
        seconds longer than the rest); dense maps skip the arrays, whose size grows with the points."""
        self.walker()
        if not self.dense:
            self._squared_norms  # noqa: B018 (a cached property: computing it is the point)

    def walker(self):
        """One walker per explorer (model loaded once, kNN graph cached), shared by all walk jobs and maps. (The
        explorer's walks run between images; their paths are placed on each map by :meth:`map_positions`.)"""
        models = self._models
        with models.walker_lock:
            if models.walker is None:
                from ..walks import Walker

                models.walker = Walker(self.scope, model=self.codec, device=self.device)
            return models.walker

    def reconstruction_png(self, image_id: int) -> bytes | None:
        if not self.knows(image_id):
            return None
        pixels = self.codec.decode_to_pixels(self.latents([image_id]))
        return png_bytes(pixels[0])

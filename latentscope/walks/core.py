"""Walks: from ends and a method to decoded frames.

A walk passes through knots (its ends and via points, or the points of a
direction walk). Consecutive knots are joined by a segment of the chosen
method; frames are shared out between segments, evaluated in latent space,
optionally polished by the denoiser, and decoded in batches. Every knot is a
frame and reproduces its latent exactly.

Methods
-------
``lerp``         straight line in latent space.
``slerp``        great-circle arc (keeps the norm of Gaussian-like latents).
``noise-slerp``  DDIM-invert the knots to noise level ``noise_level``, slerp the
                 noises, DDIM-sample every frame (Song et al., DDIM, sec. 5.3). The
                 inversion round-trip error of each knot is added back, blended
                 linearly along the segment, so the ends are exact and the walk
                 has no jump next to them.
``data-path``    shortest route through the kNN graph of the scope's real latents;
                 frames are interpolated between consecutive real waypoints.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import InputError, ScopeError
from ..images import pixels_to_tensor_range
from .ends import DEFAULT_MAP, End, latents_from_map, load_map_projection, not_found, parse_end, parse_group, prepare_file
from .graph import LatentGraph
from .interpolants import lerp, polyline, slerp
from .spacing import dense_samples, equal_arc_positions, share_out, uniform_positions

log = logging.getLogger(__name__)

METHODS = ("lerp", "slerp", "noise-slerp", "data-path")
DENOISER_METHODS = ("noise-slerp",)
MAX_STEPS = 10_000
AUTO_NOISE_ALPHA = 0.02  # auto inversion level: the noisiest step keeping this much signal (alpha_bar)


def auto_noise_level(denoiser, min_alpha: float = AUTO_NOISE_ALPHA) -> float:
    """The noisiest level t at which DDIM inversion and sampling stay well conditioned.

    A DDIM step estimates the clean latent from the model output. With epsilon
    prediction that is ``(x - sqrt(1 - a) eps) / sqrt(a)``: at the end of schedules
    such as the cosine one (``a = alpha_bar ~ 1e-9``) the model's error is
    amplified ~10^4 times and the walk falls apart, so the level stops where
    ``alpha_bar >= min_alpha`` (0.02: the noise keeps a signal share of ~0.14).
    With v- or sample prediction the estimate stays bounded and t = 1 (pure
    noise, the DDIM paper's setting) is used.
    """
    if denoiser.prediction_type != "epsilon":
        return 1.0
    alphas = np.asarray(denoiser.alphas_cumprod, np.float64)
    usable = np.flatnonzero(alphas >= min_alpha)
    top = int(usable.max()) if len(usable) else 1
    return top / (len(alphas) - 1)


@dataclass
class WalkSpec:
    """Everything that determines a walk's frames (stored in export sidecars).

    ``ends`` are end specs (see :mod:`latentscope.walks.ends`): start, via points,
    stop. A direction walk has a single end (the image to move) and ``direction``
    = ``{"from": group, "to": group, "strength": [lo, hi]}``: frames run from
    ``z + lo * d`` to ``z + hi * d`` with ``d = mean(to) - mean(from)``.
    """

    ends: list
    method: str = "slerp"
    steps: int = 24
    loop: bool = False
    even: bool = False
    density: int = 4  # dense samples per frame when measuring image change for ``even``
    polish: float | None = None  # noise level t of the polish, None = off
    polish_steps: int = 4
    seed: int = 0
    noise_level: float | None = None  # noise-slerp: inversion level t; None = auto (see auto_noise_level)
    ddim_steps: int = 25  # noise-slerp: DDIM steps for inversion and sampling
    neighbours: int = 10  # data-path: k of the kNN graph
    edge_power: float = 2.0  # data-path: edge weight = distance ** power
    direction: dict | None = None
    map_name: str = DEFAULT_MAP
    refine_ends: int = 0  # optimisation steps that fit each image end's latent to its image (Codec.refine)

    def __post_init__(self):
        self.ends = [parse_end(end, self.map_name) for end in self.ends]
        if self.direction is not None:
            self.direction = _check_direction(self.direction)
        self.validate()

    def validate(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"--method {self.method}: choose one of {', '.join(METHODS)}")
        if not 2 <= int(self.steps) <= MAX_STEPS:
            raise InputError(f"--steps {self.steps}: a walk needs between 2 and {MAX_STEPS} frames")
        if self.direction is None and len(self.ends) < 2:
            raise InputError("a walk needs at least two points (--from and --to), or --direction with one image")
        if self.direction is not None and len(self.ends) != 1:
            raise InputError("a direction walk moves one image: give --from only (no --to or --via)")
        if self.polish is not None and not 0.0 < float(self.polish) <= 1.0:
            raise InputError(f"--polish {self.polish}: the polish noise level must be in (0, 1]")
        if self.noise_level is not None and not 0.0 < float(self.noise_level) <= 1.0:
            raise InputError(f"--noise-level {self.noise_level}: must be in (0, 1]")
        if int(self.refine_ends) < 0:
            raise InputError(f"--refine-ends {self.refine_ends}: must be 0 or more")
        for name in ("polish_steps", "ddim_steps", "neighbours", "density"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name}={getattr(self, name)}: must be at least 1")
        if not float(self.edge_power) > 0:
            raise InputError(f"edge power {self.edge_power}: must be positive")

    @property
    def needs_denoiser(self) -> bool:
        return self.method in DENOISER_METHODS or self.polish is not None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "WalkSpec":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InputError(f"walk parameters {sorted(unknown)}: not known to this version of latentscope")
        return cls(**data)


def _check_direction(direction: dict) -> dict:
    try:
        lo, hi = (float(v) for v in direction.get("strength", (0.0, 1.0)))
    except (TypeError, ValueError):
        raise InputError(f"--strength {direction.get('strength')!r}: give two numbers LO,HI") from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo == hi:
        raise InputError(f"--strength {lo},{hi}: give two different finite numbers")
    if "from" not in direction or "to" not in direction:
        raise InputError("a direction needs two groups: from and to")
    return {"from": parse_group(direction["from"]), "to": parse_group(direction["to"]), "strength": [lo, hi]}


@dataclass
class Walk:
    """A decoded walk.

    ``latents`` F x C x h x w float32 and ``pixels`` F x H x W x 3 uint8, one per
    frame; ``segments`` and ``positions`` say where each frame sits (segment
    index, fraction of that segment); ``knot_frames`` are the frames that are the
    walk's knots; ``waypoints`` lists, per segment, the real image ids a
    data-path visits.
    """

    spec: WalkSpec
    latents: np.ndarray
    pixels: np.ndarray
    segments: np.ndarray
    positions: np.ndarray
    knot_frames: list[int]
    knot_latents: np.ndarray
    waypoints: list[list[int]] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    real_latents: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.pixels)

    def metrics(self, real_latents: np.ndarray | None = None, use_lpips: bool = True):
        """Smoothness metrics (see :mod:`latentscope.walks.metrics`), with nearest-real distances when real latents are known."""
        from .metrics import walk_metrics

        real = self.real_latents if real_latents is None else real_latents
        return walk_metrics(self.pixels, self.latents, real, use_lpips=use_lpips)

    def save(self, out: str | Path, *, fps: float = 12.0, size=None, resample: str = "nearest", pingpong: bool = False,
             repeat: bool = True, layout: str = "sheet", columns: int | None = None, gap: int = 2,
             metrics: bool | dict = True) -> Path:
        """Export as GIF / MP4 / PNG (by suffix) and write the sidecar JSON next to it; returns the sidecar path.

        ``metrics``: True measures the walk and records the summary in the sidecar,
        a dict is recorded as given, False records none.
        """
        from .export import export_frames, write_sidecar
        from .replay import sidecar_payload

        record = export_frames(self.pixels, out, fps=fps, size=size, resample=resample, pingpong=pingpong, repeat=repeat,
                               layout=layout, columns=columns, gap=gap)
        summary = metrics if isinstance(metrics, dict) else self.metrics().summary if metrics else None
        return write_sidecar(out, sidecar_payload(self, record, summary))


# ---------------------------------------------------------------------------- segments


class Segment:
    """A piece of the walk between two knots; ``at(u)`` gives latents at positions u in [0, 1]."""

    def __init__(self, start: np.ndarray, stop: np.ndarray):
        self.start, self.stop = start, stop

    @property
    def length(self) -> float:
        return float(np.linalg.norm((self.stop - self.start).ravel()))

    def at(self, u: np.ndarray) -> np.ndarray:
        return lerp(self.start, self.stop, u)


class SlerpSegment(Segment):
    def at(self, u):
        return slerp(self.start, self.stop, u)


class RouteSegment(Segment):
    """Lerp between consecutive waypoints of a route (ends plus real latents), by cumulative distance."""

    def __init__(self, points: np.ndarray, waypoint_rows: list[int]):
        super().__init__(points[0], points[-1])
        self.points, self.rows = points, waypoint_rows

    @property
    def length(self) -> float:
        return float(np.linalg.norm(np.diff(self.points.reshape(len(self.points), -1), axis=0), axis=1).sum())

    def at(self, u):
        return polyline(self.points, u)


class NoiseSlerpSegment(Segment):
    """Slerp between the knots' DDIM-inverted noises, sampled back with DDIM, with the round-trip error pinned out."""

    def __init__(self, space: "NoiseSpace", first: int, second: int):
        super().__init__(space.knots[first], space.knots[second])
        self.space, self.first, self.second = space, first, second

    def at(self, u):
        u = np.atleast_1d(np.asarray(u, np.float64))
        noises = slerp(self.space.noises[self.first], self.space.noises[self.second], u)
        residual = lerp(self.space.residuals[self.first], self.space.residuals[self.second], u)
        return self.space.sample(noises) + residual


class NoiseSpace:
    """DDIM inversion of the knots (each once), and batched DDIM sampling from that level."""

    def __init__(self, denoiser, knots: np.ndarray, level: float, steps: int, batch_size: int = 64, progress: bool = False):
        self.denoiser, self.level, self.steps, self.batch_size, self.progress = denoiser, level, steps, batch_size, progress
        self.knots = knots
        self.noises = self._batched(denoiser.invert, knots, steps, level)
        self.residuals = knots - self.sample(self.noises)
        scale = np.sqrt((knots.reshape(len(knots), -1) ** 2).mean(axis=1))
        self.inversion_error = (np.sqrt((self.residuals.reshape(len(knots), -1) ** 2).mean(axis=1)) / np.maximum(scale, 1e-12)).tolist()

    def sample(self, noises: np.ndarray) -> np.ndarray:
        return self._batched(self.denoiser.denoise, noises, self.level, self.steps)

    def _batched(self, function, latents: np.ndarray, *args) -> np.ndarray:
        from tqdm.auto import tqdm

        parts = []
        starts = range(0, len(latents), self.batch_size)
        for start in tqdm(starts, desc="DDIM", unit="batch", disable=not self.progress or len(starts) < 2, leave=False):
            chunk = torch.from_numpy(np.ascontiguousarray(latents[start : start + self.batch_size], np.float32))
            parts.append(function(chunk, *args).float().cpu().numpy())
        return np.concatenate(parts)


# ---------------------------------------------------------------------------- the walker


class Walker:
    """Runs walks over one scope with one model (loaded once, reused across walks).

    Parameters
    ----------
    scope : a :class:`~latentscope.scope.Scope`, a scope folder, or None (then
        only latent and file ends work, and no data-path).
    model : model reference or loaded :class:`~latentscope.codec.Codec`; default:
        the model recorded in the scope's ``scope.json``.
    denoiser : model reference (with ``unet/``) or loaded
        :class:`~latentscope.denoiser.Denoiser`; default: the model reference.
        Loaded only for noise-slerp and polish.
    projection : object with ``inverse_transform(xy) -> latents`` for map ends;
        default: the scope's stored map (``load_map_projection``).
    """

    def __init__(self, scope=None, model=None, denoiser=None, projection=None, device="auto", dtype="auto",
                 batch_size: int = 64, progress: bool = False):
        from ..scope import Scope

        self.scope = scope if scope is None or isinstance(scope, Scope) else Scope(scope)
        self.device, self.dtype, self.batch_size, self.progress = device, dtype, batch_size, progress
        self._model, self._denoiser, self._projections = model, denoiser, {}
        if projection is not None:
            self._projections[None] = projection
        self._codec = None
        self._denoiser_loaded = None
        self._real = None
        self._graphs: dict = {}

    # ------------------------------------------------------------------ lazily loaded pieces

    @property
    def model_reference(self) -> str:
        if self._model is not None:
            return str(getattr(self._model, "reference", None) or self._model)
        recorded = self.scope.model.get("reference") if self.scope is not None else None
        if not recorded:
            raise InputError("no model: give --model (the scope records none)")
        return str(recorded)

    @property
    def codec(self):
        if self._codec is None:
            from ..codec import Codec

            model = self._model if self._model is not None else self.model_reference
            self._codec = model if isinstance(model, Codec) else Codec.from_pretrained(model, device=self.device, dtype=self.dtype)
            self._check_model_matches_scope()
        return self._codec

    def _check_model_matches_scope(self) -> None:
        if self.scope is None:
            return
        recorded = self.scope.model
        if recorded.get("fingerprint") and self._codec.fingerprint and recorded["fingerprint"] != self._codec.fingerprint:
            from ..codec import other_model_error

            raise other_model_error(self._codec.reference, self.scope)
        shape = recorded.get("latent_shape")
        size = recorded.get("image_size")
        if shape and size and list(self._codec.latent_shape(tuple(size))) != list(shape):
            raise ScopeError(f"model {self._codec.reference} makes latents of shape {self._codec.latent_shape(tuple(size))}, "
                             f"the scope holds {tuple(shape)}; use the model the scope was encoded with")

    @property
    def denoiser(self):
        if self._denoiser_loaded is None:
            from ..denoiser import Denoiser

            source = self._denoiser if self._denoiser is not None else self.model_reference
            if isinstance(source, Denoiser):
                self._denoiser_loaded = source
            else:
                self._denoiser_loaded = Denoiser.from_pretrained(source, device=self.device, dtype=self.dtype)
                self._denoiser_loaded.check_latents(self.codec.latent_channels)
        return self._denoiser_loaded

    def real_latents(self) -> np.ndarray:
        """The scope's latents as float32 (N x C x h x w), loaded once."""
        if self._real is None:
            if self.scope is None:
                raise InputError("this needs a scope's real latents; give a scope")
            self._real = np.asarray(self.scope.latents(), np.float32)
        return self._real

    def graph(self, k: int, power: float) -> LatentGraph:
        key = (k, power)
        if key not in self._graphs:
            from .knn_cache import cached_knn_table

            real = self.real_latents()
            table = cached_knn_table(self.scope, real, k)
            self._graphs[key] = LatentGraph.build(real, k, power, table=table)
        return self._graphs[key]

    def projection(self, name: str):
        if None in self._projections:
            return self._projections[None]
        if name not in self._projections:
            if self.scope is None:
                raise InputError("map coordinates need a scope with a map (or pass projection=...)")
            self._projections[name] = load_map_projection(self.scope, name)
        return self._projections[name]

    def describe(self, spec: WalkSpec) -> dict:
        """Where the walk's scope and models live, as recorded in sidecars."""
        described = {
            "scope": str(self.scope.path) if self.scope is not None else None,
            "model": {"reference": portable_reference(self.codec.reference), "fingerprint": self.codec.fingerprint,
                      "class": self.codec.class_name},
            "denoiser": None,
        }
        if spec.needs_denoiser:
            described["denoiser"] = {"reference": portable_reference(self.denoiser.reference)}
        return described

    # ------------------------------------------------------------------ ends

    def latent_shape(self) -> tuple[int, ...]:
        if self.scope is not None and self.scope.model.get("latent_shape"):
            return tuple(self.scope.model["latent_shape"])
        size = self.codec.image_size
        if size is None:
            raise InputError("cannot tell the latent shape: the model has no sample_size and there is no scope")
        return tuple(self.codec.latent_shape(size))

    def resolve(self, spec: dict) -> End:
        """The latent (and real row, if any) of one end spec."""
        kind = spec["kind"]
        if kind == "id":
            if self.scope is None:
                raise InputError(f"image id {spec['id']}: ids need a scope")
            row = int(self.scope.rows_for_ids([spec["id"]])[0])
            return self._real_end(row, spec)
        if kind == "file":
            return self._resolve_file(spec)
        if kind == "path":
            return self._resolve_scope_path(spec)
        if kind == "map":
            latent = latents_from_map(self.projection(spec["map"]), [spec["xy"]], self.latent_shape())[0]
            return End(latent, spec)
        latent = np.asarray(spec["latent"], np.float32)
        if self.scope is not None and tuple(latent.shape) != self.latent_shape():
            raise InputError(f"latent of shape {latent.shape}: the scope's latents are {self.latent_shape()}")
        return End(latent, spec)

    def _real_end(self, row: int, spec: dict) -> End:
        """The end at the scope's latent ``row``."""
        return End(np.asarray(self.scope.latents()[row], np.float32), spec, row)

    def _row_where(self, column: str, value) -> int | None:
        """The latent row of the first encoded image whose manifest ``column`` equals ``value``, if any."""
        ok = self.scope.ok_manifest()
        same = ok.index[ok[column] == value]
        return int(ok.loc[same[0], "row"]) if len(same) else None

    def _resolve_scope_path(self, spec: dict) -> End:
        """The scope's image at ``spec["path"]`` (relative to the encoded folder)."""
        row = self._row_where("path", spec["path"]) if self.scope is not None else None
        if row is None:
            raise not_found(spec["path"])
        return self._real_end(row, spec)

    def _resolve_file(self, spec: dict) -> End:
        preprocess = self.scope.meta.get("preprocess", {}) if self.scope is not None else {}
        pixels, digest = prepare_file(spec["path"], preprocess, self.codec.image_size)
        if spec.get("sha256") and spec["sha256"] != digest:
            log.warning("%s changed since the walk was recorded (sha256 differs)", spec["path"])
        spec = {**spec, "sha256": digest}
        if self.scope is not None and not preprocess.get("sample"):
            row = self._row_where("sha256", digest)
            if row is not None:
                return self._real_end(row, spec)
        return End(self.codec.encode_pixels(pixels, refine=int(preprocess.get("refine", 0)))[0], spec)

    def refined(self, ends: list[End], steps: int) -> list[End]:
        """``ends`` with the latents of image ends refined together by ``steps`` steps against their images, so the
        walk starts and stops on frames closer to the real images; other ends (map points, latents) stay as they are."""
        chosen = [i for i, end in enumerate(ends) if end.row is not None or end.spec["kind"] == "file"]
        if not steps or not chosen:
            return ends
        preprocess = self.scope.meta.get("preprocess", {}) if self.scope is not None else {}
        paths = [ends[i].spec["path"] if ends[i].row is None else self.scope.image_path(self._ids([ends[i].row])[0])
                 for i in chosen]
        pixels = np.concatenate([prepare_file(path, preprocess, self.codec.image_size)[0] for path in paths])
        start = torch.from_numpy(np.stack([ends[i].latent for i in chosen]))
        latents = self.codec.refine(torch.from_numpy(pixels_to_tensor_range(pixels)), start, steps).cpu().numpy()
        out = list(ends)
        for i, latent in zip(chosen, latents):
            out[i] = End(latent, ends[i].spec, ends[i].row)
        return out

    def knots(self, ends: list[End], spec: WalkSpec) -> list[End]:
        """The points the walk passes through: the ends, or those of a direction walk."""
        if spec.direction is None:
            return ends
        start = ends[0]
        d = self.group_mean(spec.direction["to"]) - self.group_mean(spec.direction["from"])
        lo, hi = spec.direction["strength"]
        knots = [End(start.latent + np.float32(lo) * d, {"kind": "latent", "strength": lo})]
        if lo < 0 < hi or hi < 0 < lo:
            knots.append(start)
        knots.append(End(start.latent + np.float32(hi) * d, {"kind": "latent", "strength": hi}))
        return knots

    def _column_equals(self, column: str, value: str) -> np.ndarray:
        """Which encoded images have ``value`` in metadata ``column`` (any case; numbers compare as numbers)."""
        from ..metadata import column_values, matches_value

        where = f"group {column}={value}"
        values = column_values(self.scope, column, where)
        equal = matches_value(values, value)
        if not equal.any():
            seen = ", ".join(sorted(values.dropna().astype(str).unique())[:20]) or "none"
            raise InputError(f"{where}: no encoded image has that value (values: {seen})")
        return equal

    def group_mean(self, group: dict) -> np.ndarray:
        if self.scope is None:
            raise InputError("direction groups need a scope")
        ok = self.scope.ok_manifest()
        if "label" in group:
            rows = ok.loc[ok["label"] == str(group["label"]), "row"].to_numpy()
            if not len(rows):
                labels = ", ".join(sorted(set(ok["label"]) - {""})[:20]) or "none"
                raise InputError(f"group label:{group['label']}: no encoded image has that label (labels: {labels})")
        elif "column" in group:
            rows = ok.loc[self._column_equals(str(group["column"]), str(group["value"])), "row"].to_numpy()
        else:
            if not group["ids"]:
                raise InputError("group ids: give at least one image id")
            rows = self.scope.rows_for_ids(group["ids"])
        return self.real_latents()[np.sort(rows)].mean(axis=0)

    # ------------------------------------------------------------------ running

    def run(self, spec: WalkSpec) -> Walk:
        timings = {}
        started = time.perf_counter()
        ends = self.refined([self.resolve(end) for end in spec.ends], spec.refine_ends)
        spec = replace(spec, ends=[end.spec for end in ends])  # as resolved: files gain their sha256
        knots = self.knots(ends, spec)
        if spec.loop and len(knots) < 2:
            raise InputError("a closed loop needs at least two points")
        knot_latents = np.stack([k.latent for k in knots]).astype(np.float32)
        timings["resolve"] = time.perf_counter() - started

        tick = time.perf_counter()
        info: dict = {}
        segments = self.segments(knots, spec, info)
        timings["path"] = time.perf_counter() - tick

        tick = time.perf_counter()
        frame_segments, frame_u = self.place_frames(segments, spec, timings)
        latents = self.evaluate(segments, frame_segments, frame_u)
        timings["frames"] = time.perf_counter() - tick

        if spec.polish is not None:
            tick = time.perf_counter()
            latents = self.polish(latents, frame_segments, frame_u, knot_latents, spec)
            timings["polish"] = time.perf_counter() - tick
        knot_frames = pin_knots(latents, frame_segments, frame_u, knot_latents)

        tick = time.perf_counter()
        pixels = self.codec.decode_to_pixels(latents, self.batch_size)
        timings["decode"] = time.perf_counter() - tick
        timings["total"] = time.perf_counter() - started
        info["seconds"] = {k: round(v, 4) for k, v in timings.items()}
        info["knots"] = [k.label for k in knots]
        info["walker"] = self.describe(spec)
        waypoints = [self._ids(seg.rows) for seg in segments] if spec.method == "data-path" else []
        return Walk(spec, latents, pixels, frame_segments, frame_u, knot_frames, knot_latents, waypoints, info,
                    real_latents=self.scope.latents() if self.scope is not None else None)

    def segments(self, knots: list[End], spec: WalkSpec, info: dict) -> list[Segment]:
        pairs = [(i, i + 1) for i in range(len(knots) - 1)] + ([(len(knots) - 1, 0)] if spec.loop else [])
        if spec.method == "lerp":
            return [Segment(knots[a].latent, knots[b].latent) for a, b in pairs]
        if spec.method == "slerp":
            return [SlerpSegment(knots[a].latent, knots[b].latent) for a, b in pairs]
        if spec.method == "noise-slerp":
            level = spec.noise_level if spec.noise_level is not None else auto_noise_level(self.denoiser)
            space = NoiseSpace(self.denoiser, np.stack([k.latent for k in knots]), level, spec.ddim_steps,
                               self.batch_size, self.progress)
            info["noise_level"] = level
            info["inversion_error"] = [round(e, 6) for e in space.inversion_error]
            return [NoiseSlerpSegment(space, a, b) for a, b in pairs]
        graph = self.graph(spec.neighbours, spec.edge_power)
        return [self._route(graph, knots[a], knots[b]) for a, b in pairs]

    def _route(self, graph: LatentGraph, start: End, stop: End) -> RouteSegment:
        rows = graph.route(start.row if start.row is not None else start.latent, stop.row if stop.row is not None else stop.latent)
        inner = [r for r in rows if r not in (start.row, stop.row)]
        points = np.concatenate([start.latent[None], self.real_latents()[inner], stop.latent[None]]) if inner else np.stack([start.latent, stop.latent])
        return RouteSegment(points.astype(np.float32), inner)

    def _ids(self, rows: Sequence[int]) -> list[int]:
        ids = self.scope.ok_manifest()["id"].to_numpy()
        return [int(ids[r]) for r in rows]

    def place_frames(self, segments: list[Segment], spec: WalkSpec, timings: dict) -> tuple[np.ndarray, np.ndarray]:
        """Segment index and position of every frame; every knot is a frame."""
        closed = spec.loop
        total = spec.steps if closed else spec.steps - 1
        if spec.even:
            tick = time.perf_counter()
            arcs, dense = self.measure_arcs(segments, spec)
            counts = share_out(arcs, total)
            within = [equal_arc_positions(u, steps, n) for (u, steps), n in zip(dense, counts)]
            timings["measure"] = time.perf_counter() - tick
        else:
            counts = share_out([seg.length for seg in segments], total)
            within = [uniform_positions(n) for n in counts]
        frame_segments = np.concatenate([np.full(len(u), i) for i, u in enumerate(within)])
        frame_u = np.concatenate(within)
        if not closed:
            frame_segments = np.append(frame_segments, len(segments) - 1)
            frame_u = np.append(frame_u, 1.0)
        return frame_segments.astype(np.int64), frame_u

    def measure_arcs(self, segments: list[Segment], spec: WalkSpec) -> tuple[list[float], list[tuple[np.ndarray, np.ndarray]]]:
        """Decode a dense sample of every segment; its image arc length and the per-sample step distances."""
        counts = dense_samples([seg.length for seg in segments], spec.density * spec.steps)
        grids = [np.linspace(0.0, 1.0, n + 1) for n in counts]
        latents = np.concatenate([seg.at(u) for seg, u in zip(segments, grids)])
        pixels = self.codec.decode_to_pixels(latents, self.batch_size).astype(np.float32) / 255.0
        arcs, dense, start = [], [], 0
        for u in grids:
            block = pixels[start : start + len(u)]
            start += len(u)
            steps = np.sqrt(((block[1:] - block[:-1]) ** 2).reshape(len(block) - 1, -1).mean(axis=1))
            arcs.append(float(steps.sum()))
            dense.append((u, steps))
        return arcs, dense

    @staticmethod
    def evaluate(segments: list[Segment], frame_segments: np.ndarray, frame_u: np.ndarray) -> np.ndarray:
        """Latents of all frames, one batched call per segment."""
        shape = segments[0].start.shape
        latents = np.empty((len(frame_u), *shape), np.float32)
        for index, segment in enumerate(segments):
            chosen = frame_segments == index
            if chosen.any():
                latents[chosen] = segment.at(frame_u[chosen])
        return latents

    def polish(self, latents, frame_segments, frame_u, knot_latents, spec: WalkSpec) -> np.ndarray:
        """Noise every frame to level ``polish`` with one shared noise draw and DDIM-denoise it back.

        The shared draw keeps consecutive frames coherent (no flicker); the knots'
        own polish residuals are blended back along each segment so knots stay exact.
        """
        from ..runtime import make_generator

        generator = make_generator(spec.seed)
        noise = torch.randn((1, *latents.shape[1:]), generator=generator)
        both = np.concatenate([latents, knot_latents])
        out = []
        for start in range(0, len(both), self.batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(both[start : start + self.batch_size]))
            out.append(self.denoiser.reconstruct(chunk, spec.polish, spec.polish_steps, noise=noise.expand(len(chunk), *noise.shape[1:])).float().cpu().numpy())
        polished = np.concatenate(out)
        frames, knot_polished = polished[: len(latents)], polished[len(latents) :]
        residuals = knot_latents - knot_polished
        following = (frame_segments + 1) % len(knot_latents)
        weight = frame_u.reshape(-1, *([1] * (latents.ndim - 1))).astype(np.float32)
        return frames + (1 - weight) * residuals[frame_segments] + weight * residuals[following]


def portable_reference(reference: str | None) -> str | None:
    """A model reference that still resolves from another working folder (local paths made absolute)."""
    if not reference or reference.startswith("builtin:"):
        return reference
    path = Path(reference).expanduser()
    return str(path.resolve()) if path.exists() else reference


def pin_knots(latents: np.ndarray, frame_segments: np.ndarray, frame_u: np.ndarray, knot_latents: np.ndarray) -> list[int]:
    """Set the frames that sit on knots to the knots' latents exactly; returns their indices."""
    frames = []
    for index, (segment, u) in enumerate(zip(frame_segments, frame_u)):
        if u == 0.0:
            latents[index] = knot_latents[segment]
            frames.append(index)
        elif u == 1.0:
            latents[index] = knot_latents[(segment + 1) % len(knot_latents)]
            frames.append(index)
    return frames


def walk(scope, start=None, stop=None, *, via: Sequence = (), model=None, denoiser=None, projection=None,
         device="auto", dtype="auto", batch_size: int = 64, progress: bool = False, **options) -> Walk:
    """Walk from ``start`` through ``via`` to ``stop`` (ids, file paths, ``map:X,Y``, latents).

    ``options`` are the fields of :class:`WalkSpec` (method, steps, loop, even,
    polish, seed, direction, ...). For a direction walk give ``start`` and
    ``direction={"from": "label:a", "to": "label:b", "strength": (0, 1)}``.
    """
    ends = [e for e in (start, *via, stop) if e is not None]
    spec = WalkSpec(ends=ends, **options)
    walker = Walker(scope, model=model, denoiser=denoiser, projection=projection, device=device, dtype=dtype,
                    batch_size=batch_size, progress=progress)
    return walker.run(spec)

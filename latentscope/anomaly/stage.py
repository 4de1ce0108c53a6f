"""``latentscope score``: score every image of a scope, store scores and heatmaps, resume when interrupted.

Files written (``NAME`` = the score's name, ``default`` unless given)::

    scores/NAME.parquet          id, score, and the method's parts (one row per scored image, sorted by id)
    scores/NAME.maps.npy         float16 N x h x w heatmaps, row i = parquet row i (methods with maps)
    scores/NAME.calibration.npz  the diffusion score's fitted statistics (recompute one heatmap on demand)

and the parameters under ``scope.json["scores"][NAME]``.

The diffusion score runs in two passes. Pass 1 reconstructs the *reference*
images (a seeded sample of the scope itself, or of another scope of normal
images) and fits the per-level statistics; pass 2 scores every other image in
batches. Both passes checkpoint finished batches under
``.partial/score/NAME/``; rerunning the same command resumes, and the resumed
run gives exactly the scores of an uninterrupted one (noise depends only on
the seed and the image id, and batch boundaries do not move).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..errors import ImageError, InputError, ModelError, ScopeError
from ..fileio import read_json, write_json, write_npy
from ..images import DEFAULT_MAX_PIXELS, prepare_image, read_file
from ..loader import PrefetchLoader
from ..scope import Scope, check_name
from .base import Batch, Method, Scores
from .checkpoints import ShardWriter, load_shards
from .diffusion import MAX_DENSITY_REFERENCE, SURPRISE_PREFIX
from .reconstruct import LevelErrors

log = logging.getLogger(__name__)

RECONSTRUCTING_METHODS = ("diffusion", "roundtrip")
STAGE = "score"
DEFAULT_REFERENCE_SIZE = 512
MAPS_SUFFIX = ".maps.npy"
CALIBRATION_SUFFIX = ".calibration.npz"
DISPLAY_QUANTILE = 0.9  # heatmap colours saturate at this quantile of the per-image map maxima (the top tenth glow)


# --------------------------------------------------------------------------- reading a scope's images


class ScopeImages:
    """The scope's images as the model saw them: files re-read and prepared with the scope's ``preprocess``."""

    def __init__(self, scope: Scope):
        self.scope = scope
        pre = scope.meta.get("preprocess") or {}
        if "size" not in pre:
            raise ScopeError(f"{scope.path}: scope.json has no preprocess size; re-encode with 'latentscope encode'")
        self.size = tuple(int(v) for v in pre["size"])
        self.resize = pre.get("resize", "center-crop")
        self.background = tuple(pre.get("background", (255, 255, 255)))
        self.max_pixels = int(pre.get("max_pixels", DEFAULT_MAX_PIXELS))
        ok = scope.ok_manifest()
        self.ids = ok["id"].to_numpy(np.int64)
        self.rows = dict(zip(self.ids.tolist(), ok["row"].tolist()))
        self.paths = dict(zip(self.ids.tolist(), ok["path"].tolist()))
        self.latents = scope.latents()

    def pixels(self, image_id: int) -> np.ndarray:
        """uint8 H x W x 3, or :class:`ImageError` with the reason."""
        path = self.scope.image_path(image_id)
        data = read_file(path)
        return prepare_image(data, self.size, self.resize, self.background, self.max_pixels, thumb_size=None).pixels

    def load(self, image_id: int) -> tuple[int, np.ndarray | None, str]:
        try:
            return image_id, self.pixels(image_id), ""
        except ImageError as exc:
            return image_id, None, str(exc)

    def collate(self, loaded: list[tuple[int, np.ndarray | None, str]]) -> tuple[Batch | None, list[tuple[int, str]]]:
        good = [(i, p) for i, p, _ in loaded if p is not None]
        failed = [(i, e) for i, p, e in loaded if p is None]
        if not good:
            return None, failed
        ids = np.array([i for i, _ in good], dtype=np.int64)
        rows = np.array([self.rows[int(i)] for i in ids])
        order = np.argsort(rows)  # memory-map reads in file order
        latents = np.empty((len(ids), *self.latents.shape[1:]), np.float32)
        latents[order] = self.latents[rows[order]]
        return Batch(np.stack([p for _, p in good]), latents, ids), failed

    def batches(self, ids, batch_size: int, workers: int | None = None) -> PrefetchLoader:
        return PrefetchLoader(list(map(int, ids)), self.load, batch_size, collate=self.collate, workers=workers)

    def batch(self, ids) -> Batch:
        batch, failed = self.collate([self.load(int(i)) for i in ids])
        if failed:
            raise ImageError(f"image {failed[0][0]}: {failed[0][1]}")
        return batch


# --------------------------------------------------------------------------- the run


@dataclass
class ScoreSummary:
    """What one scoring run did."""

    scope: Path
    name: str
    method: str
    scored: int = 0
    resumed: int = 0
    skipped: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0
    top: pd.DataFrame | None = None
    engine: str = "local"
    reused: bool = False  # the stored scores were up to date: nothing was computed

    @property
    def images_per_second(self) -> float:
        return (self.scored - self.resumed) / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        if self.reused:
            out = [f"scope: {self.scope}", f"scores/{self.name}.parquet: up to date with the images and settings "
                   f"({self.scored} images scored with {self.method}); reused, --force scores again"]
            return out + self._top_lines()
        out = [f"scope: {self.scope}", f"scores/{self.name}.parquet: {self.scored} images scored with {self.method}"]
        if self.resumed:
            out.append(f"resumed an interrupted run: {self.resumed} images came from its checkpoints")
        for image_id, reason in list(self.skipped.items())[:10]:
            out.append(f"  skipped image {image_id}: {reason}")
        if len(self.skipped) > 10:
            out.append(f"  ... and {len(self.skipped) - 10} more skipped")
        out.append(f"time {self.seconds:.1f} s, {self.images_per_second:.1f} images/s")
        return out + self._top_lines()

    def _top_lines(self) -> list[str]:
        out = []
        if self.top is not None and len(self.top):
            has_terms = "terms" in self.top.columns
            explained = " (score; each term's z-score against the reference, the one driving the score first)"
            out.append(f"most anomalous {len(self.top)}" + (explained if has_terms else "") + ":")
            width = max(len(str(p)) for p in self.top["path"])
            for row in self.top.itertuples(index=False):
                terms = f"  ({row.terms})" if has_terms else ""
                out.append(f"  {row.score:10.3f}  id {row.id:<7d} {str(row.path):<{width}}{terms}".rstrip())
        return out


#: Stored parameters that do not change the scores: the model is matched by its fingerprint, not by how it was named
IGNORED_PARAMS = ("batch_size", "display", "model")


def _comparable(params: dict) -> dict:
    return {k: v for k, v in json.loads(json.dumps(params, default=str)).items() if k not in IGNORED_PARAMS}


def _stored_scores_match(scope: Scope, name: str, params: dict, digests: dict[str, str], wants_maps: bool) -> bool:
    """True when score ``name`` was made with ``params`` on the same images (and reference images), skipped none,
    and its files are all there: scoring again would write the same file."""
    entry = scope.meta.get("scores", {}).get(name)
    if entry is None or entry.get("counts", {}).get("skipped", 1) or _comparable(entry.get("params", {})) != _comparable(params):
        return False
    if any(entry.get(key) != digest for key, digest in digests.items()) or (wants_maps and "maps" not in entry.get("files", {})):
        return False
    files = [f"{name}.parquet", *entry.get("files", {}).values()]
    return all(scope.inside("scores", f, what=f"score {name!r} file").is_file() for f in files)


def _identity(params: dict, ids: np.ndarray) -> dict:
    return json.loads(json.dumps({"params": params, "ids": _ids_digest(ids)}, default=str))


def _ids_digest(ids: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(ids, dtype=np.int64).tobytes()).hexdigest()[:16]


def score_is_current(scope, name: str = "default", method: str = "diffusion", **options) -> bool:
    """True when score ``name`` exists, was made with ``method`` and ``options`` (unset ones at their defaults)
    and covers exactly the images the scope holds now (so rerunning would give the same file)."""
    from .diffusion import DiffusionScore

    scope = scope if isinstance(scope, Scope) else Scope(scope)
    entry = scope.meta.get("scores", {}).get(name)
    if entry is None or entry.get("params", {}).get("method") != method:
        return False
    if method == "diffusion":
        reference_size = options.pop("reference_size", DEFAULT_REFERENCE_SIZE)
        wanted = {"method": method, **DiffusionScore(None, None, **options).params()}
        ok_ids = scope.ok_manifest()["id"].to_numpy(np.int64)
        wanted["reference_size"] = min(reference_size, len(ok_ids))
    else:
        wanted = {"method": method, **options}
        ok_ids = scope.ok_manifest()["id"].to_numpy(np.int64)
    stored = json.loads(json.dumps(entry["params"]))
    wanted = json.loads(json.dumps(wanted))
    return all(stored.get(k) == v for k, v in wanted.items() if k != "batch_size") and entry.get("images") == _ids_digest(ok_ids)


def _prepare_partial(folder: Path, identity: dict) -> None:
    marker = folder / "run.json"
    if marker.exists():
        try:
            if read_json(marker) == identity:
                return
        except (OSError, ValueError):
            pass
        log.warning("%s: an interrupted run used other settings or images; starting over", folder)
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(marker, identity)


def _sample_ids(ids: np.ndarray, count: int, seed: int) -> np.ndarray:
    if len(ids) <= count:
        return np.array(ids, dtype=np.int64)
    return np.sort(np.random.default_rng([seed, 7]).choice(ids, count, replace=False)).astype(np.int64)


def _scores_arrays(ids: np.ndarray, result: Scores) -> dict[str, np.ndarray]:
    arrays = {"ids": np.asarray(ids, np.int64), "score": np.asarray(result.scores, np.float64)}
    arrays.update({f"part/{k}": np.asarray(v, np.float64) for k, v in result.parts.items()})
    if result.maps is not None:
        arrays["maps"] = np.asarray(result.maps, np.float16)
    return arrays


def _errors_arrays(ids: np.ndarray, errors: LevelErrors) -> dict[str, np.ndarray]:
    return {"ids": np.asarray(ids, np.int64), "maps": errors.maps.astype(np.float32), "latent": errors.latent}


def _failed_arrays(failed: list[tuple[int, str]]) -> dict[str, np.ndarray]:
    return {"ids": np.array([i for i, _ in failed], np.int64), "reason": np.array([e for _, e in failed], dtype=str)}


class _Pass:
    """One checkpointed sweep over image ids, calling ``work(batch)`` -> dict of arrays per batch.

    With an ``engine`` (the Ray engine) the batches are read and worked on elsewhere: ``remote`` tells it
    which work (``{"kind": "measure" | "score", "calibration": arrays or None}``); checkpoints stay here.
    """

    def __init__(self, folder: Path, images: ScopeImages, batch_size: int, workers, checkpoint_seconds: float, engine=None):
        self.folder = folder
        self.images = images
        self.batch_size = batch_size
        self.workers = workers
        self.checkpoint_seconds = checkpoint_seconds
        self.engine = engine

    def _local(self, todo: list[int], work):
        for batch, bad in self.images.batches(todo, self.batch_size, self.workers):
            yield (work(batch) if batch is not None else None), bad, (len(batch) if batch is not None else 0) + len(bad)

    def run(self, ids: np.ndarray, work, desc: str, progress: bool, summary: ScoreSummary,
            remote: dict | None = None) -> dict[str, np.ndarray] | None:
        done = load_shards(self.folder / "done")
        failed = load_shards(self.folder / "failed")
        finished = set() if done is None else set(done["ids"].tolist())
        if failed is not None:
            finished |= set(failed["ids"].tolist())
            summary.skipped.update(zip(failed["ids"].tolist(), failed["reason"].tolist()))
        todo = [i for i in ids.tolist() if i not in finished]
        summary.resumed += len(ids) - len(todo)
        writer = ShardWriter(self.folder / "done", self.checkpoint_seconds)
        failures = ShardWriter(self.folder / "failed", 0.0)
        if self.engine is not None and remote is not None:
            batches = self.engine.batches(self.images.scope.path, todo, self.batch_size, remote)
        else:
            batches = self._local(todo, work)
        try:
            with tqdm(total=len(ids), initial=len(ids) - len(todo), unit="img", desc=desc, disable=not progress,
                      dynamic_ncols=True) as bar:
                for arrays, bad, count in batches:
                    if arrays is not None:
                        writer.add(arrays)
                    if bad:
                        failures.add(_failed_arrays(bad))
                        summary.skipped.update(bad)
                    bar.update(count)
        finally:  # interrupted or not, every finished batch is kept for the next run
            writer.flush()
            failures.flush()
        return load_shards(self.folder / "done")


def resolve_models(scope: Scope, model, need_denoiser: bool, device="auto", dtype="auto"):
    """The codec (checked to be the scope's) and, when needed, the denoiser of ``model`` (default: the scope's)."""
    from ..codec import Codec
    from ..denoiser import Denoiser

    reference = str(model) if model else scope.model.get("reference")
    if not reference:
        raise ScopeError(f"{scope.path}: scope.json names no model; give --model")
    codec = Codec.from_pretrained(reference, device=device, dtype=dtype)
    recorded = scope.model.get("fingerprint")
    if recorded and codec.fingerprint and recorded != codec.fingerprint:
        raise ScopeError(
            f"--model {reference}: its autoencoder is not the one this scope was encoded with "
            f"({scope.model.get('reference')}); score with the scope's model or re-encode"
        )
    denoiser = None
    if need_denoiser:
        try:
            denoiser = Denoiser.from_pretrained(reference, device=device, dtype=dtype)
        except ModelError as exc:
            raise ModelError(
                f"{exc}. The diffusion score needs a denoiser over this autoencoder's latents "
                "(a model from 'latentscope train' or a diffusion pipeline folder); or choose a baseline with --method roundtrip"
            ) from None
        denoiser.check_latents(codec.latent_channels)
    return codec, denoiser


def build_method(method: str, codec, denoiser, options: dict) -> Method:
    from .baselines import BASELINES
    from .diffusion import DiffusionScore

    if method == "diffusion":
        return DiffusionScore(codec, denoiser, **options)
    if method not in BASELINES:
        raise InputError(f"method {method!r}: choose diffusion or one of {', '.join(BASELINES)}")
    cls = BASELINES[method]
    accepted = inspect.signature(cls.__init__).parameters
    unknown = [k for k in options if k not in accepted and k not in ("seed", "batch_size")]
    if unknown:
        raise InputError(f"method {method}: option {unknown[0]!r} does not apply (it takes {', '.join(list(accepted)[1:])})")
    known = {k: v for k, v in options.items() if k in accepted}
    return cls(codec, **known) if method == "roundtrip" else cls(**known)


def score(
    scope: str | Path | Scope,
    model: str | None = None,
    *,
    name: str = "default",
    method: str = "diffusion",
    reference: str | Path | Scope | None = None,
    reference_size: int = DEFAULT_REFERENCE_SIZE,
    batch_size: int = 32,
    workers: int | None = None,
    maps: bool = True,
    top: int = 10,
    device: str = "auto",
    dtype: str = "auto",
    progress: bool = True,
    checkpoint_seconds: float = 30.0,
    engine: str = "local",
    ray_address: str | None = None,
    ray_actors: int | None = None,
    force: bool = False,
    **options,
) -> ScoreSummary:
    """Score every encoded image of ``scope`` and store ``scores/<name>.parquet`` (and heatmaps).

    ``method``: ``diffusion`` (default; options ``levels``, ``steps``, ``draws``, ``seed``, ``smoothing``,
    ``floor``, ``top_k``, ``terms``) or a baseline (``roundtrip``, ``knn-latent``, ``iforest-latent``,
    ``pca-pixel``, ``knn-pixel``). ``reference``: a scope of known-normal images encoded with the same model
    to calibrate / fit against; by default a sample of ``reference_size`` images of the scope itself
    (robust statistics keep a minority of anomalies from mattering). ``engine="ray"`` reads the images in
    Ray tasks and runs the model passes (diffusion, roundtrip) in a pool of Ray actors on the cluster at
    ``ray_address`` (see :mod:`latentscope.engines.ray_score`); the scores are the same as the local engine's.
    When the stored scores ``name`` were made with the same settings and model on the same images, they are
    reused (nothing is computed; ``summary.reused``) unless ``force``.
    """
    started = time.perf_counter()
    scope = scope if isinstance(scope, Scope) else Scope(scope)
    check_name(name, "score")
    if not 0 <= int(options.get("seed", 0)) < 2**32:
        raise InputError(f"seed {options.get('seed')}: must be a whole number from 0 to 2**32 - 1")
    if batch_size < 1 or reference_size < 2:
        raise InputError(f"batch size {batch_size} / reference size {reference_size}: must be at least 1 / 2")
    images = ScopeImages(scope)
    if not len(images.ids):
        raise ScopeError(f"{scope.path}: no encoded images to score; run 'latentscope encode' first")
    remote = None
    if engine == "ray":
        from ..engines.ray_score import RayScoreRun, check_method  # one-line InputError when Ray is missing

        check_method(method)
    elif engine != "local":
        raise InputError(f"engine {engine!r}: choose local or ray")
    # with Ray the driver only calibrates (no model passes): its copy of the models stays on the CPU
    codec, denoiser = resolve_models(scope, model, method == "diffusion", "cpu" if engine == "ray" else device, dtype)
    method_options = {**options, "batch_size": batch_size} if method == "diffusion" else options
    scorer = build_method(method, codec, denoiser, method_options)
    if engine == "ray":
        remote = RayScoreRun(codec, method, method_options, device=device, dtype=dtype, address=ray_address, actors=ray_actors)
    ref_scope = Scope(reference) if isinstance(reference, (str, Path)) else reference
    if ref_scope is not None and ref_scope.model.get("fingerprint") != scope.model.get("fingerprint"):
        raise ScopeError(f"--reference {ref_scope.path}: encoded with another model than {scope.path}")
    for checked in (scope, ref_scope):
        if checked is not None:
            _check_not_refined(checked, method)
    ref_images = ScopeImages(ref_scope) if ref_scope is not None else images
    seed = int(options.get("seed", 0))
    ref_ids = _sample_ids(ref_images.ids, reference_size, seed)

    params = {"method": method, **scorer.params(), "model": codec.reference, "model_fingerprint": codec.fingerprint,
              "reference": str(ref_scope.path) if ref_scope is not None else "self", "reference_size": len(ref_ids)}
    digests = {"images": _ids_digest(images.ids), "reference_images": _ids_digest(ref_ids)}
    summary = ScoreSummary(scope.path, name, method)
    if not force and _stored_scores_match(scope, name, params, digests, maps and scorer.has_maps):
        summary.reused, summary.scored = True, int(scope.meta["scores"][name]["counts"]["scored"])
        summary.top = top_scores(scope, name, top) if top > 0 else None
        return summary
    folder = scope.partial_dir(STAGE) / name
    _prepare_partial(folder, _identity(params, images.ids))
    log.info("scoring %d images of %s with %s (%s)", len(images.ids), scope.path, method, params)

    self_reference = ref_scope is None
    reference_results = None
    if method == "diffusion":
        sweep = _Pass(folder / "reference", ref_images, batch_size, workers, checkpoint_seconds, remote)
        measured = sweep.run(ref_ids, lambda b: _errors_arrays(b.ids, scorer.measure(b)), "calibrate", progress, summary,
                             remote={"kind": "measure", "calibration": None})
        if measured is None or len(measured["ids"]) < 2:
            raise ScopeError(f"{ref_images.scope.path}: fewer than 2 reference images could be read")
        errors = LevelErrors(measured["maps"], measured["latent"])
        # ids of another scope's images are shifted below zero so they never match a scored image's own id
        shift = (lambda ids: ids) if self_reference else (lambda ids: -1 - np.asarray(ids, np.int64))
        density_ids = _sample_ids(ref_images.ids, MAX_DENSITY_REFERENCE, seed)
        scorer.set_density_reference(_latents_for(ref_images, density_ids), shift(density_ids), progress=progress)
        ref_latents = _latents_for(ref_images, measured["ids"])
        scorer.fit_errors(errors, ref_latents, shift(measured["ids"]))
        if self_reference:
            reference_results = _scores_arrays(measured["ids"], scorer.score_errors(errors, ref_latents, measured["ids"]))
    else:
        scorer.fit(_load_all(ref_images, ref_ids, batch_size, workers, method, progress))

    todo = images.ids
    if reference_results is not None:
        todo = np.setdiff1d(images.ids, reference_results["ids"])
    if not len(todo):
        results = None  # every image was a reference image, scored with the calibration (no empty progress bar)
    elif method == "diffusion" or scorer.has_maps or method in ("pca-pixel", "knn-pixel"):
        sweep = _Pass(folder / "score", images, batch_size, workers, checkpoint_seconds, remote)
        calibration = scorer.calibration() if hasattr(scorer, "calibration") else None
        results = sweep.run(todo, lambda b: _scores_arrays(b.ids, scorer.score(b)), "score", progress, summary,
                            remote={"kind": "score", "calibration": calibration})
    else:  # latent-only baselines need no image loading
        batch = Batch(np.zeros((len(todo), 1, 1, 3), np.uint8), _latents_for(images, todo), todo)
        results = _scores_arrays(todo, scorer.score(batch))
    summary.engine = remote.description if remote is not None else "local"
    merged = _merge([r for r in (reference_results, results) if r is not None])
    summary.scored = len(merged["ids"])
    summary.seconds = time.perf_counter() - started
    _write(scope, name, merged, params, scorer, maps, summary, digests)
    scope.clear_partial(f"{STAGE}/{name}")
    summary.top = top_scores(scope, name, top) if top > 0 else None
    return summary


def _check_not_refined(scope: Scope, method: str) -> None:
    """Scores that compare images with their reconstructions need the encoder's own latents: a latent refined
    against its image (``encode --refine``) reconstructs a defect as well as the rest."""
    steps = int((scope.meta.get("preprocess") or {}).get("refine", 0))
    if steps and method in RECONSTRUCTING_METHODS:
        raise ScopeError(f"{scope.path}: encoded with --refine {steps}, whose latents are fitted to each image, anomalies "
                         f"included, so the {method} score cannot see them; score a scope encoded without --refine")


def _latents_for(images: ScopeImages, ids: np.ndarray) -> np.ndarray:
    rows = np.array([images.rows[int(i)] for i in ids], dtype=np.int64)
    return np.asarray(images.latents[rows], dtype=np.float32) if len(rows) else np.zeros((0, *images.latents.shape[1:]), np.float32)


def _load_all(images: ScopeImages, ids: np.ndarray, batch_size: int, workers, method: str, progress: bool) -> Batch:
    """The reference as one batch (pixels only for methods that use them)."""
    if method in ("knn-latent", "iforest-latent", "roundtrip"):
        return Batch(np.zeros((len(ids), 1, 1, 3), np.uint8), _latents_for(images, ids), ids)
    parts = []
    for batch, _ in tqdm(images.batches(ids, batch_size, workers), desc="load reference", disable=not progress,
                         dynamic_ncols=True):
        if batch is not None:
            parts.append(batch)
    if not parts:
        raise ScopeError(f"{images.scope.path}: no reference image could be read")
    return Batch(np.concatenate([p.pixels for p in parts]), np.concatenate([p.latents for p in parts]),
                 np.concatenate([p.ids for p in parts]))


def _merge(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    merged = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    order = np.argsort(merged["ids"], kind="stable")
    return {key: value[order] for key, value in merged.items()}


def _write(scope: Scope, name: str, merged: dict[str, np.ndarray], params: dict, scorer: Method, maps: bool,
           summary: ScoreSummary, digests: dict[str, str]) -> None:
    frame = pd.DataFrame({"id": merged["ids"], "score": merged["score"]})
    for key in merged:
        if key.startswith("part/"):
            frame[key[5:]] = merged[key]
    # heatmaps and calibration are committed with the scores and their entry: a crash never pairs old with new
    maps_name, calibration_name = f"{name}{MAPS_SUFFIX}", f"{name}{CALIBRATION_SUFFIX}"
    side = {}
    if "maps" in merged and len(merged["maps"]):
        heat = merged["maps"]
        peaks = heat.reshape(len(heat), -1).astype(np.float32).max(axis=1)
        params["display"] = [float(np.median(heat[: min(len(heat), 2000)].astype(np.float32))),
                             float(np.quantile(peaks, DISPLAY_QUANTILE))]
        if maps:
            side[maps_name] = lambda path: write_npy(path, heat)
    if hasattr(scorer, "calibration"):
        calibration = scorer.calibration()
        side[calibration_name] = lambda path: _write_npz(path, calibration)
    files = {key: file_name for key, file_name in (("maps", maps_name), ("calibration", calibration_name)) if file_name in side}
    scope.write_scores(name, frame, params, side=side, drop=[maps_name, calibration_name], files=files,
                       counts={"scored": len(frame), "skipped": len(summary.skipped)},
                       skipped={str(k): v for k, v in list(summary.skipped.items())[:100]},
                       seconds=round(summary.seconds, 3), engine=summary.engine, **digests)


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    from ..fileio import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)


def score_terms(scope: Scope, name: str = "default", frame: pd.DataFrame | None = None) -> pd.DataFrame | None:
    """The terms a stored score combined (the diffusion score's ``local``, ``content``, ...) by image id: their
    robust z-scores against the reference images, and their tail surprises (``surprise:local``, ...; the score is
    the largest) where stored; None for a score without terms."""
    scope = scope if isinstance(scope, Scope) else Scope(scope)
    terms = scope.meta.get("scores", {}).get(name, {}).get("params", {}).get("terms") or []
    if not terms:
        return None
    frame = scope.read_scores(name) if frame is None else frame
    present = [t for t in terms if t in frame.columns]
    surprises = [SURPRISE_PREFIX + t for t in present if SURPRISE_PREFIX + t in frame.columns]
    return frame.set_index("id")[present + surprises] if present else None


def describe_terms(row: pd.Series) -> str:
    """'gist 7.2, local 1.0, content -0.5': one image's terms as z-scores, the one that drives its score first
    (by the tail surprise the score takes the largest of, where stored; by z otherwise)."""
    z = {term: float(value) for term, value in row.items() if not str(term).startswith(SURPRISE_PREFIX)}
    rank = {term: float(row.get(SURPRISE_PREFIX + term, value)) for term, value in z.items()}
    shown = sorted((term for term in z if np.isfinite(z[term])), key=lambda term: -rank[term])
    return ", ".join(f"{term} {z[term]:.1f}" for term in shown)


def top_scores(scope: Scope, name: str = "default", count: int = 10) -> pd.DataFrame:
    """The ``count`` highest-scoring images: id, path, score (most anomalous first), and ``terms`` (largest first)
    for a score that combines terms."""
    scope = scope if isinstance(scope, Scope) else Scope(scope)
    frame = scope.read_scores(name)
    best = frame.nlargest(count, "score")[["id", "score"]]
    paths = scope.manifest().set_index("id")["path"]
    best = best.assign(path=paths.reindex(best["id"]).to_numpy())
    terms = score_terms(scope, name, frame)
    if terms is not None:
        best = best.assign(terms=[describe_terms(terms.loc[i]) for i in best["id"]])
    return best.reset_index(drop=True)

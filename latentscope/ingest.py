"""Encode a folder of images into a scope: the ``latentscope encode`` stage.

Work proceeds in batches of files in manifest order. Every few hundred images
the finished batches are checkpointed as a shard under ``.partial/encode/``; a
rerun after Ctrl-C or ``kill -9`` picks up the shards and encodes only the rest,
with the same ids and batch boundaries as an uninterrupted run. The final
manifest and latents are committed together at the end.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .codec import Codec
from .errors import InputError, LatentscopeError, ScopeError
from .fileio import atomic_path, load_npy, read_json, remove_unfinished_writes, write_json, write_npy, write_parquet
from .images import (
    DEFAULT_MAX_PIXELS,
    RESIZE_POLICIES,
    FoundImage,
    find_images,
    label_from_relpath,
    parse_size,
    pixels_to_tensor_range,
    write_array_images,
)
from .loader import PrefetchLoader
from .reading import Preparer, ReadItem, ReadTask
from .scope import LATENTS_FILE, NEXT_SUFFIX, Scope, normalise_manifest

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")
CHECKPOINT_IMAGES = 1024
TILING_AUTO_SIDE = 1024  # larger images are encoded tile by tile so memory stays bounded
CHECKPOINT_SECONDS = 30.0
COPY_CHUNK = 4096
NAMED_COLOURS = {"white": (255, 255, 255), "black": (0, 0, 0), "grey": (128, 128, 128), "gray": (128, 128, 128)}


@dataclass
class EncodeSummary:
    """What one encode run did."""

    scope: Path
    found: int = 0
    unchanged: int = 0
    unchanged_skipped: int = 0  # ... of them files an earlier run could not use (the manifest keeps why)
    encoded: int = 0
    reused: int = 0
    failed: int = 0
    resumed: int = 0
    reasons: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    metadata: list[str] = field(default_factory=list)  # what attaching the folder's metadata file did

    @property
    def images_per_second(self) -> float:
        return self.encoded / self.seconds if self.seconds > 0 else 0.0

    def _skipped_before(self) -> str:
        if not self.unchanged_skipped:
            return ""
        return f" ({self.unchanged_skipped} of them skipped before: 'latentscope info' says why)"

    def lines(self) -> list[str]:
        out = [
            f"scope: {self.scope}",
            f"found {self.found} image files: {self.encoded} encoded, {self.reused} reused by content hash, "
            f"{self.unchanged} already in the scope{self._skipped_before()}, {self.failed} skipped",
        ]
        if self.resumed:
            out.append(f"resumed an interrupted run: {self.resumed} images came from its checkpoints")
        for reason, count in self.reasons.most_common(10):
            out.append(f"  skipped {count} x {reason}")
        out.append(f"time {self.seconds:.1f} s" + (f", {self.images_per_second:.1f} images/s" if self.encoded else ""))
        return out + self.metadata


def parse_background(value) -> tuple[int, int, int]:
    if isinstance(value, str):
        text = value.strip().lower()
        if text in NAMED_COLOURS:
            return NAMED_COLOURS[text]
        if text.startswith("#") and len(text) == 7:
            return tuple(int(text[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
        raise InputError(f"background {value!r}: use white, black, grey or #rrggbb")
    rgb = tuple(int(v) for v in value)
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise InputError(f"background {value!r}: give three values 0-255")
    return rgb  # type: ignore[return-value]


def _stat_signature(found: FoundImage) -> tuple[int, int]:
    try:
        st = os.stat(found.path)
    except OSError:
        return -1, -1
    return st.st_size, st.st_mtime_ns


class _Encoder:
    """Runs the model over prepared batches; batches and seeds are the same in every engine."""

    def __init__(self, codec: Codec, sample: bool, seed: int, refine: int = 0):
        self.codec = codec
        self.sample = sample
        self.seed = seed
        self.refine = refine

    def collate(self, items: list[ReadItem]) -> tuple[list[ReadItem], torch.Tensor | None]:
        fresh = [it for it in items if it.pixels is not None]
        if not fresh:
            return items, None
        # N x 3 x H x W over channels-last memory, not copied to NCHW order: on CPU the TAESD encoder ran
        # 15 % slower on an NCHW copy of the same pixels (benchmarks/bench_encode.py)
        return items, torch.from_numpy(pixels_to_tensor_range(np.stack([it.pixels for it in fresh])))

    def encode_batch(self, items: list[ReadItem], tensor: torch.Tensor | None) -> np.ndarray | None:
        """Latents (float16) of the items that carry pixels, in order; marks them ``encoded``."""
        if tensor is None:
            return None
        generator = None
        if self.sample:
            generator = torch.Generator(self.codec.device).manual_seed(self.seed * 1_000_003 + items[0].task.id)
        latents = self.codec.encode(tensor, sample=self.sample, generator=generator)
        if self.refine:
            latents = self.codec.refine(tensor, latents, self.refine)
        for item in items:
            if item.pixels is not None:
                item.encoded, item.pixels = True, None
        return latents.cpu().numpy().astype(np.float16)


class _ShardWriter:
    """Accumulates finished batches and checkpoints them as shard files (latents .npy + rows .parquet)."""

    def __init__(self, folder: Path, latent_shape: tuple[int, ...], every_images: int, every_seconds: float):
        self.folder = folder
        self.latent_shape = latent_shape
        self.every_images = every_images
        self.every_seconds = every_seconds
        self.rows: list[dict] = []
        self.latents: list[np.ndarray] = []
        self.n_latents = 0
        self.last_flush = time.monotonic()
        self.sequence = len(list(folder.glob("shard-*.parquet")))

    def add(self, items: list[ReadItem], latents: np.ndarray | None) -> None:
        k = 0
        for item in items:
            shard_row = -1
            if item.encoded:
                shard_row = self.n_latents + k
                k += 1
            self.rows.append(_shard_row(item, shard_row))
        if latents is not None:
            self.latents.append(latents)
            self.n_latents += len(latents)
        if len(self.rows) >= self.every_images or time.monotonic() - self.last_flush >= self.every_seconds:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        stem = self.folder / f"shard-{self.sequence:06d}"
        block = np.concatenate(self.latents) if self.latents else np.zeros((0, *self.latent_shape), np.float16)
        write_npy(stem.with_suffix(".npy"), block)
        write_parquet(stem.with_suffix(".parquet"), pd.DataFrame(self.rows))  # its presence commits the shard
        self.sequence += 1
        self.rows, self.latents, self.n_latents = [], [], 0
        self.last_flush = time.monotonic()


def _shard_row(item: ReadItem, shard_row: int) -> dict:
    task = item.task
    return {
        "id": task.id,
        "path": task.found.relpath,
        "sha256": item.sha256,
        "width": item.width,
        "height": item.height,
        "status": "error" if item.error else "ok",
        "error": item.error,
        "label": label_from_relpath(task.found.relpath),
        "bytes": task.size,
        "mtime_ns": task.mtime_ns,
        "shard_row": shard_row,
        "reuse_row": item.reuse_row,
    }


def _load_shards(folder: Path) -> tuple[pd.DataFrame, list[Path]]:
    frames, arrays = [], []
    for rows_path in sorted(folder.glob("shard-*.parquet")):
        npy = rows_path.with_suffix(".npy")
        if not npy.exists():
            break
        frame = pd.read_parquet(rows_path)
        frame["shard"] = len(arrays)
        frames.append(frame)
        arrays.append(npy)
    if not frames:
        return pd.DataFrame(columns=["id", "path", "bytes", "mtime_ns", "shard", "shard_row", "reuse_row"]), []
    return pd.concat(frames, ignore_index=True), arrays


def _run_params(codec: Codec, size, resize, background, sample, seed, max_pixels, refine) -> dict:
    return {
        "size": list(size),
        "resize": resize,
        "background": list(background),
        "sample": bool(sample),
        "seed": int(seed),
        "refine": int(refine),
        "max_pixels": int(max_pixels),
        "model_fingerprint": codec.fingerprint,
    }


def _check_out(out: Path, allowed: set[str]) -> None:
    """Refuse an --out that is a file or a folder of other things (a typo must not litter someone's folder)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and not Scope.exists(out) and any(p.name not in allowed for p in out.iterdir()):
        raise InputError(f"--out {out}: folder is not empty and not a scope; give a new or empty folder")


def _open_or_create_scope(out: Path, codec: Codec, params: dict, images_root: Path) -> Scope:
    root_record = os.path.relpath(images_root, out) if images_root.is_relative_to(out) else str(images_root)
    if Scope.exists(out):
        scope = Scope(out)
        meta = scope.meta
        recorded = {"refine": 0, **meta.get("preprocess", {})}  # scopes from before --refine were encoded without it
        mismatched = [k for k in ("size", "resize", "background", "sample", "seed", "refine", "model_fingerprint")
                      if recorded.get(k) != params[k]]
        if "model_fingerprint" in mismatched:
            raise ScopeError(
                f"{out}: this scope was encoded with another model ({meta.get('model', {}).get('reference')}, "
                f"fingerprint {recorded.get('model_fingerprint')}), not {codec.reference} ({codec.fingerprint}); "
                "encode into a new --out folder"
            )
        if mismatched:
            key = mismatched[0]
            raise ScopeError(
                f"{out}: this scope was encoded with {key}={recorded.get(key)!r}, not {params[key]!r} "
                f"(model {meta.get('model', {}).get('reference')}); add to it with the same setting, or encode into "
                "a new --out folder"
            )
        if Path(scope.images_root) != images_root:
            raise ScopeError(f"{out}: this scope holds images from {scope.images_root}, not {images_root}; use a new --out folder")
        return scope
    meta = {"model": codec.describe(tuple(params["size"])), "preprocess": params, "images_root": root_record}
    return Scope.create(out, meta)


def encode(
    images: str | os.PathLike | Sequence[str | os.PathLike] | np.ndarray,
    model: str | os.PathLike | Codec,
    out: str | os.PathLike,
    *,
    size: int | tuple[int, int] | None = None,
    resize: str = "center-crop",
    background="white",
    batch_size: int = 32,
    device: str = "auto",
    dtype: str = "auto",
    sample: bool = False,
    seed: int = 0,
    refine: int = 0,
    workers: int | None = None,
    thumbnails: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    file_timeout: float | None = 120.0,
    labels: Sequence | None = None,
    tiling: bool | None = None,
    checkpoint_images: int = CHECKPOINT_IMAGES,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
    progress: bool = True,
    engine: str = "local",
    ray_address: str | None = None,
    ray_actors: int | None = None,
    metadata: bool = True,
) -> EncodeSummary:
    """Encode images into the scope folder ``out`` (created, appended to, or resumed).

    ``images`` is a folder (searched recursively), a list of files, or an
    in-memory array N x H x W [x C] (written as PNG files under ``out/images``).
    ``model`` is a model reference (see :mod:`latentscope.codec`) or a loaded
    :class:`Codec`. ``tiling`` encodes large images tile by tile (default: on above
    1024 pixels a side). ``engine="ray"`` reads images in Ray tasks and runs the
    model in a pool of ``ray_actors`` Ray actors (one per GPU when the cluster has
    GPUs) on the cluster at ``ray_address`` (default: the running one, or a local
    one); the scope it writes is the same as the local engine's. A folder with a
    ``metadata.csv`` / ``.jsonl`` / ``.parquet`` at its top (the Hugging Face
    image-folder layout: a ``file_name`` column and any others) gets that table
    attached as the scope's metadata (see :mod:`latentscope.metadata`) unless
    ``metadata`` is False. ``refine`` > 0 moves each latent that many optimisation
    steps closer to the one its decoder renders nearest the image
    (:meth:`Codec.refine`): sharper reconstructions, but no reconstruction-based
    anomaly score on that scope. Returns an :class:`EncodeSummary`.
    """
    if engine not in ENGINES:
        raise InputError(f"engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if batch_size < 1:
        raise InputError(f"batch size {batch_size}: must be at least 1")
    if resize not in RESIZE_POLICIES:
        raise InputError(f"resize policy {resize!r}: choose one of {', '.join(RESIZE_POLICIES)}")
    if max_pixels < 1:
        raise InputError(f"max pixels {max_pixels}: must be positive")
    if refine < 0:
        raise InputError(f"refine steps {refine}: must be 0 or more")
    out = Path(out).expanduser().resolve()
    if isinstance(images, (str, os.PathLike)) and not Path(images).expanduser().exists():
        raise InputError(f"{images}: no such folder")
    _check_out(out, allowed={"images"} if isinstance(images, np.ndarray) else set())
    if engine == "ray":
        from .engines import ray_engine  # raises a one-line InputError when Ray is not installed

        # the driver only needs the model's metadata; the actors load it where the work runs
        codec = model if isinstance(model, Codec) else Codec.from_pretrained(model, device="cpu", dtype="float32")
    else:
        codec = model if isinstance(model, Codec) else Codec.from_pretrained(model, device=device, dtype=dtype)
    size = parse_size(size) or codec.image_size
    if size is None:
        raise InputError(f"model {codec.reference}: its config has no sample_size; give the image size with --size")
    latent_shape = codec.latent_shape(size)
    background = parse_background(background)
    tiling = bool(tiling or (tiling is None and max(size) > TILING_AUTO_SIDE))
    if tiling:
        codec.enable_tiling()
    started = time.perf_counter()

    if isinstance(images, np.ndarray):
        images = write_array_images(images, out / "images", labels)
    root, found = find_images(images, exclude=[out])
    if not found and not Scope.exists(out):
        raise InputError(f"{images}: no image files found")
    params = _run_params(codec, size, resize, background, sample, seed, max_pixels, refine)
    scope = _open_or_create_scope(out, codec, params, root)
    remove_unfinished_writes(scope.path / "thumbs")  # previews a killed run was writing
    summary = EncodeSummary(scope.path, found=len(found))

    manifest = scope.manifest()
    by_path = {row.path: row for row in manifest.itertuples(index=False)}
    pending: list[tuple[FoundImage, int, int]] = []
    for item in found:
        size_bytes, mtime = _stat_signature(item)
        old = by_path.get(item.relpath)
        if old is not None and old.bytes == size_bytes and old.mtime_ns == mtime:
            summary.unchanged += 1
            summary.unchanged_skipped += old.status != "ok"
            continue
        pending.append((item, size_bytes, mtime))

    partial = scope.partial_dir("encode")
    tasks = _plan_tasks(partial, params, pending, manifest)
    shards, shard_files = _load_shards(partial)
    done = {(r.path, r.bytes, r.mtime_ns) for r in shards.itertuples(index=False)}
    summary.resumed = len(done)
    todo = [t for t in tasks if (t.found.relpath, t.size, t.mtime_ns) not in done]

    ok = manifest[manifest["status"] == "ok"]
    known = {r.sha256: (int(r.row), int(r.width), int(r.height), int(r.id)) for r in ok.itertuples(index=False)}
    writer = _ShardWriter(partial, latent_shape, checkpoint_images, checkpoint_seconds)
    if engine == "ray":
        groups = _pending_groups(tasks, todo, batch_size)
        run = ray_engine.RayEncodeRun(
            codec, params, known, thumbnails, device=device, dtype=dtype, tiling=tiling, file_timeout=file_timeout,
            address=ray_address, actors=ray_actors, thumb_dir=scope.path / "thumbs",
        )
        batches = run.batches(groups)
    else:
        preparer = Preparer(params, known, thumbnails, scope.path / "thumbs")
        worker = _Encoder(codec, sample, seed, refine)
        loader = PrefetchLoader(
            todo, preparer.prepare, batch_size, collate=worker.collate, workers=workers,
            timeout=file_timeout, on_timeout=preparer.timed_out,
        )
        batches = ((items, worker.encode_batch(items, tensor)) for items, tensor in loader)
    with tqdm(total=len(tasks), initial=len(tasks) - len(todo), unit="img", desc="encode", disable=not progress, dynamic_ncols=True) as bar:
        for items, latents in batches:
            writer.add(items, latents)
            bar.update(len(items))
        writer.flush()
    device_used = run.device_description if engine == "ray" else str(codec.device)

    if tasks:
        _finalize(scope, manifest, partial, {t.id for t in tasks}, latent_shape, summary)
    else:
        scope.clear_partial("encode")
    summary.seconds = time.perf_counter() - started
    scope.record(
        "stages", "encode", params,
        counts={"found": summary.found, "encoded": summary.encoded, "reused": summary.reused, "failed": summary.failed},
        seconds=round(summary.seconds, 3), batch_size=batch_size, device=device_used, engine=engine,
    )
    if metadata and isinstance(images, (str, os.PathLike)) and Path(images).expanduser().is_dir():
        summary.metadata = _attach_folder_metadata(scope, root)
    log.info("encode finished: %s", "; ".join(summary.lines()))
    return summary


def _attach_folder_metadata(scope: Scope, root: Path) -> list[str]:
    """Attach the image folder's own metadata file, if it has one; a table that does not fit is reported, and
    the encoded images are kept either way."""
    from .metadata import FOLDER_METADATA, annotate

    found = [root / name for name in FOLDER_METADATA if (root / name).is_file()]
    if not found:
        return []
    try:
        return annotate(scope, found[0]).lines()
    except LatentscopeError as exc:
        log.warning("%s", exc)
        return [f"metadata not attached: {exc}"]


def _pending_groups(tasks: list[ReadTask], todo: list[ReadTask], batch_size: int) -> list[list[ReadTask]]:
    """The batches still to encode, cut from the whole run so an engine resumed out of order keeps its batches."""
    left = {t.id for t in todo}
    groups = []
    for start in range(0, len(tasks), batch_size):
        group = [t for t in tasks[start : start + batch_size] if t.id in left]
        if group:
            groups.append(group)
    return groups


def _plan_tasks(partial: Path, params: dict, pending: list[tuple[FoundImage, int, int]], manifest: pd.DataFrame) -> list[ReadTask]:
    """Assign ids to pending files, keeping those an interrupted run with the same settings gave them."""
    run_file = partial / "run.json"
    assigned: dict[str, int] = {}
    if run_file.exists():
        try:
            run = read_json(run_file)
            if run.get("params") == params:
                assigned = {k: int(v) for k, v in run.get("assigned", {}).items()}
            else:
                log.warning("%s: interrupted run used other settings; starting over", partial)
                shutil.rmtree(partial)
        except (OSError, ValueError):
            shutil.rmtree(partial, ignore_errors=True)
    next_id = max([int(manifest["id"].max()) + 1 if len(manifest) else 0, *(v + 1 for v in assigned.values())])
    tasks = []
    for found, size_bytes, mtime in pending:
        if found.relpath not in assigned:
            assigned[found.relpath] = next_id
            next_id += 1
        tasks.append(ReadTask(assigned[found.relpath], found, size_bytes, mtime))
    if tasks:
        partial.mkdir(parents=True, exist_ok=True)
        write_json(run_file, {"params": params, "assigned": assigned})
    tasks.sort(key=lambda t: t.id)
    return tasks


def _finalize(scope: Scope, manifest: pd.DataFrame, partial: Path, task_ids: set[int], latent_shape, summary: EncodeSummary) -> None:
    """Merge the old manifest and latents with the new shards, and commit both together."""
    shards, shard_files = _load_shards(partial)
    shards = shards[shards["id"].isin(task_ids)].drop_duplicates("id", keep="last").sort_values("id")
    new_paths = set(shards["path"])

    old = manifest.copy()
    replaced = old["path"].isin(new_paths)
    if replaced.any():
        new_ids = dict(zip(shards["path"], shards["id"]))
        old.loc[replaced, "error"] = [f"file changed after it was read; read again as id {new_ids[p]}" for p in old.loc[replaced, "path"]]
        old.loc[replaced, "status"] = "error"
    old["source"], old["source_shard"], old["source_row"] = "old", -1, old["row"]

    fresh = shards.copy()
    fresh["source"] = np.where(fresh["reuse_row"] >= 0, "old", "shard")
    fresh["source_shard"] = np.where(fresh["reuse_row"] >= 0, -1, fresh["shard"])
    fresh["source_row"] = np.where(fresh["reuse_row"] >= 0, fresh["reuse_row"], fresh["shard_row"])

    merged = pd.concat([old, fresh], ignore_index=True).sort_values("id").reset_index(drop=True)
    is_ok = merged["status"] == "ok"
    merged["row"] = -1
    merged.loc[is_ok, "row"] = np.arange(int(is_ok.sum()))
    summary.encoded = int(((fresh["status"] == "ok") & (fresh["reuse_row"] < 0)).sum())
    summary.reused = int(((fresh["status"] == "ok") & (fresh["reuse_row"] >= 0)).sum())
    failed = fresh[fresh["status"] != "ok"]
    summary.failed = len(failed)
    summary.reasons = Counter(_reason_kind(e) for e in failed["error"])

    keep = [c for c in merged.columns if c not in ("source", "source_shard", "source_row", "shard", "shard_row", "reuse_row")]
    with scope.locked():  # a scope opened meanwhile must not take latents.npy.next for a leftover
        latents_next = _write_latents(scope, merged[is_ok], shard_files, latent_shape)
        scope.commit(normalise_manifest(merged[keep]), latents_next)
    scope.clear_partial("encode")


def _reason_kind(error: str) -> str:
    return error.split(" (")[0]


def _write_latents(scope: Scope, ok_rows: pd.DataFrame, shard_files: list[Path], latent_shape) -> Path:
    """Stream the merged latents into ``latents.npy.next`` chunk by chunk (memory stays flat)."""
    target = scope.path / (LATENTS_FILE + NEXT_SUFFIX)
    old_path = scope.path / LATENTS_FILE
    shape = (len(ok_rows), *latent_shape)
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as handle:
            np.lib.format.write_array_header_1_0(handle, {"descr": np.dtype(np.float16).str, "fortran_order": False, "shape": shape})
            for start in range(0, len(ok_rows), COPY_CHUNK):
                chunk = ok_rows.iloc[start : start + COPY_CHUNK]
                block = np.empty((len(chunk), *latent_shape), np.float16)
                for (source, shard), group in chunk.groupby(["source", "source_shard"], sort=False):
                    positions = chunk.index.get_indexer(group.index)
                    array = load_npy(old_path if source == "old" else shard_files[int(shard)], mmap=True)
                    rows = group["source_row"].to_numpy()
                    if rows.size and rows.max() >= len(array):
                        raise ScopeError(f"{old_path}: fewer latent rows than the manifest lists; run 'latentscope doctor'")
                    block[positions] = array[rows]
                    del array
                handle.write(block.tobytes())
    return target

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
import stat
import threading
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
from .errors import ImageError, InputError, ScopeError
from .fileio import atomic_path, load_npy, read_json, write_json, write_npy, write_parquet
from .images import (
    DEFAULT_MAX_PIXELS,
    RESIZE_POLICIES,
    THUMB_SIZE,
    FoundImage,
    find_images,
    label_from_relpath,
    parse_size,
    prepare_image,
    read_file,
    sha256_bytes,
    write_array_images,
)
from .loader import PrefetchLoader
from .scope import LATENTS_FILE, NEXT_SUFFIX, Scope, normalise_manifest

log = logging.getLogger(__name__)

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
    encoded: int = 0
    reused: int = 0
    failed: int = 0
    resumed: int = 0
    reasons: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.encoded / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        out = [
            f"scope: {self.scope}",
            f"found {self.found} image files: {self.encoded} encoded, {self.reused} reused by content hash, "
            f"{self.unchanged} already in the scope, {self.failed} skipped",
        ]
        if self.resumed:
            out.append(f"resumed an interrupted run: {self.resumed} images came from its checkpoints")
        for reason, count in self.reasons.most_common(10):
            out.append(f"  skipped {count} x {reason}")
        out.append(f"time {self.seconds:.1f} s, {self.images_per_second:.1f} images/s")
        return out


@dataclass
class _Task:
    id: int
    found: FoundImage
    size: int
    mtime_ns: int


@dataclass
class _Item:
    task: _Task
    sha256: str = ""
    width: int = 0
    height: int = 0
    pixels: np.ndarray | None = None
    error: str = ""
    reuse_row: int = -1  # latent row of an identical image already in the scope


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
    """Holds the settings of one run; its methods run in loader threads and the main thread."""

    def __init__(self, scope: Scope, codec: Codec, params: dict, known: dict[str, tuple[int, int, int, int]], thumbnails: bool):
        self.scope = scope
        self.codec = codec
        self.size = tuple(params["size"])
        self.resize = params["resize"]
        self.background = tuple(params["background"])
        self.max_pixels = params["max_pixels"]
        self.sample = params["sample"]
        self.seed = params["seed"]
        self.known = known  # sha256 -> (latent row, width, height, id)
        self.thumbnails = thumbnails
        (scope.path / "thumbs").mkdir(exist_ok=True)

    def prepare(self, task: _Task) -> _Item:
        item = _Item(task)
        if task.found.error:
            item.error = task.found.error
            return item
        try:
            mode = os.stat(task.found.path).st_mode
            if not stat.S_ISREG(mode):
                raise ImageError("not a regular file")
            data = read_file(task.found.path)
            item.sha256 = sha256_bytes(data)
            if item.sha256 in self.known:
                item.reuse_row, item.width, item.height, old_id = self.known[item.sha256]
                self._copy_thumb(old_id, task.id)
                return item
            prepared = prepare_image(
                data, self.size, self.resize, self.background, self.max_pixels, THUMB_SIZE if self.thumbnails else None
            )
        except ImageError as exc:
            item.error = str(exc)
            return item
        item.pixels, item.width, item.height = prepared.pixels, prepared.width, prepared.height
        if self.thumbnails:
            _write_cache_file(self.scope.thumb_path(task.id), prepared.thumbnail)
        return item

    def _copy_thumb(self, old_id: int, new_id: int) -> None:
        source = self.scope.thumb_path(old_id)
        if self.thumbnails and source.exists():
            _write_cache_file(self.scope.thumb_path(new_id), source.read_bytes())

    def timed_out(self, task: _Task) -> _Item:
        return _Item(task, error="timed out while decoding (per-file time limit)")

    def collate(self, items: list[_Item]) -> tuple[list[_Item], torch.Tensor | None]:
        fresh = [it for it in items if it.pixels is not None]
        if not fresh:
            return items, None
        stacked = torch.from_numpy(np.stack([it.pixels for it in fresh]))
        tensor = stacked.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0).contiguous()
        return items, tensor

    def encode_batch(self, items: list[_Item], tensor: torch.Tensor | None) -> np.ndarray | None:
        if tensor is None:
            return None
        generator = None
        if self.sample:
            generator = torch.Generator(self.codec.device).manual_seed(self.seed * 1_000_003 + items[0].task.id)
        latents = self.codec.encode(tensor, sample=self.sample, generator=generator)
        return latents.cpu().numpy().astype(np.float16)


def _write_cache_file(path: Path, data: bytes) -> None:
    """Write a regenerable cache file (thumbnail) by rename, without the cost of fsync."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


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

    def add(self, items: list[_Item], latents: np.ndarray | None) -> None:
        k = 0
        for item in items:
            shard_row = -1
            if item.pixels is not None:
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


def _shard_row(item: _Item, shard_row: int) -> dict:
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


def _run_params(codec: Codec, size, resize, background, sample, seed, max_pixels) -> dict:
    return {
        "size": list(size),
        "resize": resize,
        "background": list(background),
        "sample": bool(sample),
        "seed": int(seed),
        "max_pixels": int(max_pixels),
        "model_fingerprint": codec.fingerprint,
    }


def _open_or_create_scope(out: Path, codec: Codec, params: dict, images_root: Path) -> Scope:
    root_record = os.path.relpath(images_root, out) if images_root.is_relative_to(out) else str(images_root)
    if Scope.exists(out):
        scope = Scope(out)
        meta = scope.meta
        recorded = meta.get("preprocess", {})
        mismatched = [k for k in ("size", "resize", "background", "sample", "seed", "model_fingerprint") if recorded.get(k) != params[k]]
        if mismatched:
            key = mismatched[0]
            raise ScopeError(
                f"{out}: this scope was encoded with {key}={recorded.get(key)!r}, not {params[key]!r} "
                f"(model {meta.get('model', {}).get('reference')}); encode into a new --out folder"
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
    workers: int | None = None,
    thumbnails: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    file_timeout: float | None = 120.0,
    labels: Sequence | None = None,
    tiling: bool | None = None,
    checkpoint_images: int = CHECKPOINT_IMAGES,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
    progress: bool = True,
) -> EncodeSummary:
    """Encode images into the scope folder ``out`` (created, appended to, or resumed).

    ``images`` is a folder (searched recursively), a list of files, or an
    in-memory array N x H x W [x C] (written as PNG files under ``out/images``).
    ``model`` is a model reference (see :mod:`latentscope.codec`) or a loaded
    :class:`Codec`. ``tiling`` encodes large images tile by tile (default: on above
    1024 pixels a side). Returns an :class:`EncodeSummary`.
    """
    if batch_size < 1:
        raise InputError(f"batch size {batch_size}: must be at least 1")
    if resize not in RESIZE_POLICIES:
        raise InputError(f"resize policy {resize!r}: choose one of {', '.join(RESIZE_POLICIES)}")
    if max_pixels < 1:
        raise InputError(f"max pixels {max_pixels}: must be positive")
    out = Path(out).expanduser().resolve()
    if isinstance(images, (str, os.PathLike)) and not Path(images).expanduser().exists():
        raise InputError(f"{images}: no such folder")
    codec = model if isinstance(model, Codec) else Codec.from_pretrained(model, device=device, dtype=dtype)
    size = parse_size(size) or codec.image_size
    if size is None:
        raise InputError(f"model {codec.reference}: its config has no sample_size; give the image size with --size")
    latent_shape = codec.latent_shape(size)
    background = parse_background(background)
    if tiling or (tiling is None and max(size) > TILING_AUTO_SIDE):
        codec.enable_tiling()
    started = time.perf_counter()

    if isinstance(images, np.ndarray):
        images = write_array_images(images, out / "images", labels)
    root, found = find_images(images, exclude=[out])
    params = _run_params(codec, size, resize, background, sample, seed, max_pixels)
    scope = _open_or_create_scope(out, codec, params, root)
    summary = EncodeSummary(scope.path, found=len(found))

    manifest = scope.manifest()
    by_path = {row.path: row for row in manifest.itertuples(index=False)}
    pending: list[tuple[FoundImage, int, int]] = []
    for item in found:
        size_bytes, mtime = _stat_signature(item)
        old = by_path.get(item.relpath)
        if old is not None and old.bytes == size_bytes and old.mtime_ns == mtime:
            summary.unchanged += 1
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
    worker = _Encoder(scope, codec, params, known, thumbnails)
    writer = _ShardWriter(partial, latent_shape, checkpoint_images, checkpoint_seconds)
    loader = PrefetchLoader(
        todo, worker.prepare, batch_size, collate=worker.collate, workers=workers,
        timeout=file_timeout, on_timeout=worker.timed_out,
    )
    with tqdm(total=len(tasks), initial=len(tasks) - len(todo), unit="img", desc="encode", disable=not progress, dynamic_ncols=True) as bar:
        for items, tensor in loader:
            writer.add(items, worker.encode_batch(items, tensor))
            bar.update(len(items))
        writer.flush()

    if tasks:
        _finalize(scope, manifest, partial, {t.id for t in tasks}, latent_shape, summary)
    else:
        scope.clear_partial("encode")
    summary.seconds = time.perf_counter() - started
    scope.record(
        "stages", "encode", params,
        counts={"found": summary.found, "encoded": summary.encoded, "reused": summary.reused, "failed": summary.failed},
        seconds=round(summary.seconds, 3), batch_size=batch_size, device=str(codec.device),
    )
    log.info("encode finished: %s", "; ".join(summary.lines()))
    return summary


def _plan_tasks(partial: Path, params: dict, pending: list[tuple[FoundImage, int, int]], manifest: pd.DataFrame) -> list[_Task]:
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
        tasks.append(_Task(assigned[found.relpath], found, size_bytes, mtime))
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
    latents_next = _write_latents(scope, merged[is_ok], shard_files, latent_shape)

    summary.encoded = int(((fresh["status"] == "ok") & (fresh["reuse_row"] < 0)).sum())
    summary.reused = int(((fresh["status"] == "ok") & (fresh["reuse_row"] >= 0)).sum())
    failed = fresh[fresh["status"] != "ok"]
    summary.failed = len(failed)
    summary.reasons = Counter(_reason_kind(e) for e in failed["error"])

    keep = [c for c in merged.columns if c not in ("source", "source_shard", "source_row", "shard", "shard_row", "reuse_row")]
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

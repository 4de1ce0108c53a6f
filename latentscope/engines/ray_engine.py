"""Run ``encode`` on a Ray cluster with Ray Data.

The pending files become a Ray dataset with one row per batch, cut exactly as the
local engine cuts them (so ``--sample`` draws the same noise). Each row is read,
hashed, validated and resized in a Ray task (the same :class:`~latentscope.ingest.Preparer`
the local engine uses in its threads); the model runs in a pool of Ray actors
(``map_batches`` with a class: one model load per actor, one GPU per actor when the
cluster has GPUs). The driver receives the latents as they come, writes previews
and checkpoints shards into the scope's ``.partial/encode/`` folder, and the
local engine's commit merges them: the scope is the same whichever engine wrote it.

Workers need the image folder at the same path (a shared file system) and
latentscope installed; the scope folder is written by the driver only.
Ray restarts a dead worker and retries its task; a file that cannot be read is
recorded with its reason, exactly as locally.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import InputError, ModelError

try:
    import ray
    import ray.data
except ImportError:  # pragma: no cover - exercised only without ray
    raise InputError("the ray engine needs Ray, which is not installed: pip install latentscope[ray]") from None

from ..loader import PrefetchLoader
from ..reading import Preparer, ReadItem, ReadTask, write_cache_file

# Read tasks unpickle functions of this module: it must not import torch at the top (that is the actors' cost).

log = logging.getLogger(__name__)

READ_SHARE = 0.25  # CPU-only clusters: the share of each CPU left to the read tasks (logical CPUs for Ray)
LOADER_THREADS = 2  # decoding threads inside each read task (Pillow releases the GIL)


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """Use the running Ray session, or connect to ``address`` (``auto``, ``ray://host:10001``, ...), or start a
    local one; shut down only a session started here."""
    if ray.is_initialized():
        yield
        return
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
    except ConnectionError as exc:
        raise InputError(f"--ray-address {address}: cannot connect to a Ray cluster there ({exc})") from None
    try:
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def quiet_data_context() -> Iterator[None]:
    """Ray Data's own progress bars and banners off while latentscope's tqdm bar reports."""
    ctx = ray.data.DataContext.get_current()
    saved = ctx.enable_progress_bars, ctx.print_on_execution_start, ctx.verbose_stats_logs
    data_logger = logging.getLogger("ray.data")
    saved_level = data_logger.level
    ctx.enable_progress_bars, ctx.print_on_execution_start, ctx.verbose_stats_logs = False, False, False
    data_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        ctx.enable_progress_bars, ctx.print_on_execution_start, ctx.verbose_stats_logs = saved
        data_logger.setLevel(saved_level)


def actor_resources(device: str, actors: int | None) -> tuple[int, dict]:
    """How many model actors to run and what each asks Ray for.

    With GPUs in the cluster: one actor per GPU (and one CPU each), the other CPUs read images.
    CPU only: one single-threaded actor per CPU, each reserving ``1 - READ_SHARE`` of it, so the read
    tasks (which cost a fraction of the model's time) always find room beside them.
    """
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus and device != "cpu":
        return actors or gpus, {"num_gpus": 1, "num_cpus": 1}
    if device not in ("auto", "cpu"):
        raise InputError(f"--device {device}: the Ray cluster has no GPUs; use --device cpu or auto")
    cpus = int(resources.get("CPU", 1))
    return actors or max(1, cpus), {"num_cpus": 1 - READ_SHARE}


# --------------------------------------------------------------------------- read tasks


def _read_group(row: dict, params: dict, thumbnails: bool, file_timeout: float | None) -> dict:
    """Ray task: read, hash, validate and resize the files of one batch (previews kept as bytes)."""
    tasks: list[ReadTask] = pickle.loads(row["tasks"])
    preparer = Preparer(params, {}, thumbnails, thumb_dir=None)
    loader = PrefetchLoader(
        tasks, preparer.prepare, len(tasks), workers=min(LOADER_THREADS, len(tasks)),
        timeout=file_timeout, on_timeout=preparer.timed_out,
    )
    items = next(iter(loader))
    return {"group": row["group"], "items": pickle.dumps(items, protocol=5)}


# --------------------------------------------------------------------------- model actors


class _EncodeActor:
    """Ray actor: loads the model once, then encodes batch after batch."""

    def __init__(self, reference: str, fingerprint: str, device: str, dtype: str, tiling: bool, params: dict,
                 known: dict, thumbnails: bool, threads: int | None):
        import torch

        from ..codec import Codec
        from ..ingest import _Encoder

        if threads:
            torch.set_num_threads(threads)
        codec = Codec.from_pretrained(reference, device=device, dtype=dtype)
        if fingerprint and codec.fingerprint != fingerprint:
            raise ModelError(
                f"--model {reference}: the copy on Ray node {ray.util.get_node_ip_address()} differs from the driver's "
                f"(fingerprint {codec.fingerprint} != {fingerprint}); give every node the same model files"
            )
        if tiling:
            codec.enable_tiling()
        self.encoder = _Encoder(codec, params["sample"], params["seed"])
        self.reuser = Preparer(params, known, thumbnails, thumb_dir=None)
        self.device = str(codec.device)

    def __call__(self, batch: dict) -> dict:
        results = []
        for blob in batch["items"]:
            items: list[ReadItem] = pickle.loads(blob)
            for item in items:
                if item.pixels is not None:
                    self.reuser.reuse(item)  # same content already in the scope: no need to encode it again
            latents = self.encoder.encode_batch(*self.encoder.collate(items))
            results.append(pickle.dumps((items, latents, self.device), protocol=5))
        return {"group": batch["group"], "result": np.array(results, dtype=object)}


# --------------------------------------------------------------------------- the driver


class RayEncodeRun:
    """One encode run on Ray: :meth:`batches` yields ``(items, latents)`` like the local engine's loop."""

    def __init__(self, codec, params: dict, known: dict, thumbnails: bool, *, device: str = "auto",
                 dtype: str = "auto", tiling: bool = False, file_timeout: float | None = None,
                 address: str | None = None, actors: int | None = None, thumb_dir: Path | None = None,
                 threads_per_actor: int | None = None):
        if not codec.reference:
            raise InputError("the ray engine loads the model on every worker: give the model as a folder or hub id, "
                             "not an in-memory Codec")
        reference = codec.reference
        if not reference.startswith("builtin:") and os.path.exists(os.path.expanduser(reference)):
            reference = os.path.abspath(os.path.expanduser(reference))
        self.reference = reference
        self.fingerprint = codec.fingerprint
        self.params = params
        self.known = known
        self.thumbnails = thumbnails
        self.device = device
        self.dtype = dtype
        self.tiling = tiling
        self.file_timeout = file_timeout
        self.address = address
        self.actors = actors
        self.thumb_dir = thumb_dir
        self.threads_per_actor = threads_per_actor
        self.devices: set[str] = set()
        self.pool: tuple[int, dict] | None = None

    @property
    def device_description(self) -> str:
        if self.pool is None:
            return "ray"
        count, resources = self.pool
        where = ", ".join(sorted(self.devices)) or "none used"
        return f"ray: {count} model actors ({where})"

    def dataset(self, groups: list[list[ReadTask]]):
        """The lazy Ray dataset: read tasks, then the model actor pool."""
        count, resources = self.pool = actor_resources(self.device, self.actors)
        rows = [{"group": i, "tasks": pickle.dumps(group, protocol=5)} for i, group in enumerate(groups)]
        ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
        ds = ds.map(
            _read_group, fn_kwargs={"params": self.params, "thumbnails": self.thumbnails, "file_timeout": self.file_timeout},
            num_cpus=READ_SHARE if "num_gpus" not in resources else 1,
        )
        return ds.map_batches(
            _EncodeActor,
            fn_constructor_kwargs={
                "reference": self.reference, "fingerprint": self.fingerprint, "device": self.device, "dtype": self.dtype,
                "tiling": self.tiling, "params": self.params, "known": self.known, "thumbnails": self.thumbnails,
                "threads": self.threads_per_actor,
            },
            batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=count),
            **resources,
        )

    def batches(self, groups: list[list[ReadTask]]) -> Iterator[tuple[list[ReadItem], np.ndarray | None]]:
        if not groups:
            return
        if self.thumb_dir is not None:
            self.thumb_dir.mkdir(parents=True, exist_ok=True)
        with ray_session(self.address), quiet_data_context():
            for row in self.dataset(groups).iter_rows():
                items, latents, device = pickle.loads(row["result"])
                self.devices.add(device)
                if self.thumb_dir is not None:
                    for item in items:
                        if item.thumbnail:
                            write_cache_file(self.thumb_dir / f"{item.task.id}.jpg", item.thumbnail)
                            item.thumbnail = b""
                yield items, latents

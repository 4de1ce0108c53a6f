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
import functools
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


# --------------------------------------------------------------------------- a stage on Ray: read tasks, then model actors


class ModelActor:
    """Base of the model actors: a subclass loads its model in ``__init__`` (once per actor), sets ``device``
    and implements ``process(value)`` for the value one read task produced."""

    device = "cpu"

    def process(self, value):
        raise NotImplementedError

    def __call__(self, batch: dict) -> dict:
        results = [pickle.dumps((self.process(pickle.loads(blob)), self.device), protocol=5) for blob in batch["data"]]
        return {"group": batch["group"], "result": np.array(results, dtype=object)}


def _read_row(row: dict, read) -> dict:
    """Ray task: ``read`` one group's payload (files to pixels, ...), for the model actors."""
    return {"group": row["group"], "data": pickle.dumps(read(pickle.loads(row["payload"])), protocol=5)}


class RayStage:
    """Run ``read`` over payloads in Ray tasks and ``actor_class(**actor_kwargs).process`` over what they read
    in a pool of actors; :meth:`results` yields the actors' results as they arrive (in no fixed order)."""

    def __init__(self, read, actor_class: type, actor_kwargs: dict, *, device: str = "auto", actors: int | None = None,
                 address: str | None = None):
        if actors is not None and actors < 1:
            raise InputError(f"--ray-actors {actors}: must be at least 1")
        self.read = read
        self.actor_class = actor_class
        self.actor_kwargs = actor_kwargs
        self.device = device
        self.actors = actors
        self.address = address
        self.devices: set[str] = set()
        self.pool: tuple[int, dict] | None = None

    @property
    def description(self) -> str:
        if self.pool is None:
            return "ray"
        where = ", ".join(sorted(self.devices)) or "none used"
        return f"ray: {self.pool[0]} model actors ({where})"

    def dataset(self, payloads: list):
        """The lazy Ray dataset: one row per payload, read tasks, then the model actor pool."""
        count, resources = self.pool = actor_resources(self.device, self.actors)
        rows = [{"group": i, "payload": pickle.dumps(payload, protocol=5)} for i, payload in enumerate(payloads)]
        ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
        ds = ds.map(_read_row, fn_kwargs={"read": self.read}, num_cpus=READ_SHARE if "num_gpus" not in resources else 1)
        return ds.map_batches(
            self.actor_class, fn_constructor_kwargs=self.actor_kwargs, batch_size=1, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=count), **resources,
        )

    def results(self, payloads: list) -> Iterator:
        if not payloads:
            return
        with ray_session(self.address), quiet_data_context():
            for row in self.dataset(payloads).iter_rows():
                result, device = pickle.loads(row["result"])
                self.devices.add(device)
                yield result


def model_reference(codec) -> str:
    """How actors on other processes (and nodes) load the driver's model: its reference, local folders made absolute."""
    if not codec.reference:
        raise InputError("the ray engine loads the model on every worker: give the model as a folder or hub id, "
                         "not an in-memory Codec")
    reference = codec.reference
    if not reference.startswith("builtin:") and os.path.exists(os.path.expanduser(reference)):
        reference = os.path.abspath(os.path.expanduser(reference))
    return reference


def load_codec(reference: str, fingerprint: str, device: str, dtype: str):
    """The model in an actor, checked to be the driver's."""
    from ..codec import Codec

    codec = Codec.from_pretrained(reference, device=device, dtype=dtype)
    if fingerprint and codec.fingerprint != fingerprint:
        raise ModelError(
            f"--model {reference}: the copy on Ray node {ray.util.get_node_ip_address()} differs from the driver's "
            f"(fingerprint {codec.fingerprint} != {fingerprint}); give every node the same model files"
        )
    return codec


# --------------------------------------------------------------------------- encode


def _read_group(tasks: list[ReadTask], params: dict, thumbnails: bool, file_timeout: float | None) -> list[ReadItem]:
    """Read, hash, validate and resize the files of one batch (previews kept as bytes for the driver)."""
    preparer = Preparer(params, {}, thumbnails, thumb_dir=None)
    loader = PrefetchLoader(
        tasks, preparer.prepare, len(tasks), workers=min(LOADER_THREADS, len(tasks)),
        timeout=file_timeout, on_timeout=preparer.timed_out,
    )
    return next(iter(loader))


class _EncodeActor(ModelActor):
    """Loads the model once, then encodes batch after batch."""

    def __init__(self, reference: str, fingerprint: str, device: str, dtype: str, tiling: bool, params: dict,
                 known: dict, thumbnails: bool):
        from ..ingest import _Encoder

        codec = load_codec(reference, fingerprint, device, dtype)
        if tiling:
            codec.enable_tiling()
        self.encoder = _Encoder(codec, params["sample"], params["seed"], params.get("refine", 0))
        self.reuser = Preparer(params, known, thumbnails, thumb_dir=None)
        self.device = str(codec.device)

    def process(self, items: list[ReadItem]) -> tuple[list[ReadItem], np.ndarray | None]:
        for item in items:
            if item.pixels is not None:
                self.reuser.reuse(item)  # same content already in the scope: no need to encode it again
        return items, self.encoder.encode_batch(*self.encoder.collate(items))


class RayEncodeRun:
    """One encode run on Ray: :meth:`batches` yields ``(items, latents)`` like the local engine's loop."""

    def __init__(self, codec, params: dict, known: dict, thumbnails: bool, *, device: str = "auto",
                 dtype: str = "auto", tiling: bool = False, file_timeout: float | None = None,
                 address: str | None = None, actors: int | None = None, thumb_dir: Path | None = None):
        read = functools.partial(_read_group, params=params, thumbnails=thumbnails, file_timeout=file_timeout)
        actor_kwargs = {"reference": model_reference(codec), "fingerprint": codec.fingerprint, "device": device,
                        "dtype": dtype, "tiling": tiling, "params": params, "known": known, "thumbnails": thumbnails}
        self.stage = RayStage(read, _EncodeActor, actor_kwargs, device=device, actors=actors, address=address)
        self.thumb_dir = thumb_dir

    @property
    def device_description(self) -> str:
        return self.stage.description

    def batches(self, groups: list[list[ReadTask]]) -> Iterator[tuple[list[ReadItem], np.ndarray | None]]:
        if self.thumb_dir is not None and groups:
            self.thumb_dir.mkdir(parents=True, exist_ok=True)
        for items, latents in self.stage.results(groups):
            if self.thumb_dir is not None:
                for item in items:
                    if item.thumbnail:
                        write_cache_file(self.thumb_dir / f"{item.task.id}.jpg", item.thumbnail)
                        item.thumbnail = b""
            yield items, latents

"""Run ``score``'s model passes on a Ray cluster (the diffusion score's calibration and scoring sweeps, roundtrip).

Each batch of image ids (cut as the local engine cuts them) is read in a Ray task: the files re-read and
prepared with the scope's settings, the latents taken from the scope's memory map, exactly as
:class:`~latentscope.anomaly.stage.ScopeImages` does locally. The model runs in a pool of Ray actors (one per
GPU when the cluster has GPUs), each loading the codec and denoiser once and, for the scoring sweep, the
calibration the driver fitted. Noise depends only on the seed and the image id, so the scores equal the
local engine's. The driver keeps the checkpoints: an interrupted run resumes with either engine.

Workers need the scope folder and the image folder at the same paths (a shared file system).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import InputError
from .ray_engine import LOADER_THREADS, ModelActor, RayStage, model_reference

MODEL_METHODS = ("diffusion", "roundtrip")  # the methods that run a model; the others are cheap on one machine


def check_method(method: str) -> None:
    if method not in MODEL_METHODS:
        raise InputError(f"--engine ray: method {method!r} runs no model, so there is nothing to spread out; "
                         f"use the local engine (Ray runs {', '.join(MODEL_METHODS)})")


@functools.lru_cache(maxsize=4)
def _scope_images(path: str, manifest_stamp: int):
    """The scope's images in this worker process (kept while its manifest is unchanged)."""
    from ..anomaly.stage import ScopeImages
    from ..scope import Scope

    return ScopeImages(Scope(path))


def _read_batch(payload: tuple[str, list[int]]):
    """Ray task: one batch of pixels and latents, and the ids that could not be read (with the reason)."""
    from ..loader import PrefetchLoader
    from ..scope import MANIFEST_FILE

    path, ids = payload
    images = _scope_images(path, os.stat(Path(path) / MANIFEST_FILE).st_mtime_ns)
    loader = PrefetchLoader(ids, images.load, len(ids), collate=images.collate, workers=min(LOADER_THREADS, len(ids)))
    return next(iter(loader))


class _ScoreActor(ModelActor):
    """Loads the scorer's models once (and the calibration for the scoring sweep), then works batch after batch."""

    def __init__(self, scope_path: str, reference: str, method: str, options: dict, device: str, dtype: str,
                 kind: str, calibration: dict | None):
        from ..anomaly.stage import build_method, resolve_models
        from ..scope import Scope

        codec, denoiser = resolve_models(Scope(scope_path), reference, method == "diffusion", device, dtype)
        self.scorer = build_method(method, codec, denoiser, options)
        if calibration is not None:
            self.scorer.load_calibration(calibration)
        self.kind = kind
        self.device = str(codec.device)

    def process(self, value):
        from ..anomaly.stage import _errors_arrays, _scores_arrays

        batch, failed = value
        if batch is None:
            return None, failed, len(failed)
        if self.kind == "measure":
            arrays = _errors_arrays(batch.ids, self.scorer.measure(batch))
        else:
            arrays = _scores_arrays(batch.ids, self.scorer.score(batch))
        return arrays, failed, len(batch) + len(failed)


class RayScoreRun:
    """The Ray engine of one ``score`` run: :meth:`batches` yields ``(arrays, failed, count)`` per batch."""

    def __init__(self, codec, method: str, options: dict, *, device: str = "auto", dtype: str = "auto",
                 address: str | None = None, actors: int | None = None):
        check_method(method)
        self.reference = model_reference(codec)
        self.method = method
        self.options = options
        self.device = device
        self.dtype = dtype
        self.address = address
        self.actors = actors
        self.descriptions: list[str] = []

    @property
    def description(self) -> str:
        return self.descriptions[-1] if self.descriptions else "ray"

    def batches(self, scope_path: Path, ids: list[int], batch_size: int, remote: dict) -> Iterator:
        payloads = [(str(scope_path), ids[start : start + batch_size]) for start in range(0, len(ids), batch_size)]
        actor_kwargs = {"scope_path": str(scope_path), "reference": self.reference, "method": self.method,
                        "options": self.options, "device": self.device, "dtype": self.dtype, "kind": remote["kind"],
                        "calibration": _plain_arrays(remote.get("calibration"))}
        stage = RayStage(_read_batch, _ScoreActor, actor_kwargs, device=self.device, actors=self.actors, address=self.address)
        try:
            yield from stage.results(payloads)
        finally:
            self.descriptions.append(stage.description)


def _plain_arrays(arrays: dict | None) -> dict | None:
    return None if arrays is None else {key: np.asarray(value) for key, value in arrays.items()}

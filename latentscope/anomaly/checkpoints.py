"""Checkpoint shards of a scoring run: named NumPy arrays per finished batch range, stored as ``.npz``.

A shard file appears by atomic rename, so a crash leaves only whole shards; a
resumed run loads them and skips their images. Nothing is pickled.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..fileio import atomic_path


class ShardWriter:
    """Collects dicts of arrays (same keys, first axis = images) and writes them as shards now and then."""

    def __init__(self, folder: Path, every_seconds: float = 30.0, every_images: int = 4096):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.every_seconds = every_seconds
        self.every_images = every_images
        self.pending: list[dict[str, np.ndarray]] = []
        self.count = 0
        self.last = time.monotonic()
        self.sequence = len(list(self.folder.glob("shard-*.npz")))

    def add(self, arrays: dict[str, np.ndarray]) -> None:
        self.pending.append(arrays)
        self.count += len(arrays["ids"])
        if self.count >= self.every_images or time.monotonic() - self.last >= self.every_seconds:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        merged = {key: np.concatenate([p[key] for p in self.pending]) for key in self.pending[0]}
        with atomic_path(self.folder / f"shard-{self.sequence:06d}.npz") as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, **merged)
        self.sequence += 1
        self.pending, self.count, self.last = [], 0, time.monotonic()


def load_shards(folder: Path) -> dict[str, np.ndarray] | None:
    """All shards of ``folder`` concatenated, or None when there are none."""
    parts = []
    for path in sorted(Path(folder).glob("shard-*.npz")):
        with np.load(path, allow_pickle=False) as stored:
            parts.append({key: stored[key] for key in stored.files})
    if not parts:
        return None
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}

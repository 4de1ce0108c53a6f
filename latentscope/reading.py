"""Reading image files for the encoder, without torch: the local engine runs this in loader threads,
the Ray engine in its read tasks (which then start in a fraction of the time a torch import takes)."""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ImageError
from .images import THUMB_SIZE, FoundImage, prepare_image, read_file, sha256_bytes


@dataclass
class ReadTask:
    id: int
    found: FoundImage
    size: int
    mtime_ns: int


@dataclass
class ReadItem:
    task: ReadTask
    sha256: str = ""
    width: int = 0
    height: int = 0
    pixels: np.ndarray | None = None
    error: str = ""
    reuse_row: int = -1  # latent row of an identical image already in the scope
    thumbnail: bytes = b""  # preview bytes, when no thumbnail folder was given to write them to
    encoded: bool = False  # its latent is in the batch's latents (pixels are dropped once encoded)


class Preparer:
    """Reads, hashes, validates and resizes one file; runs in loader threads (local engine) or Ray tasks.

    With ``thumb_dir`` the preview is written there; without it the preview bytes stay on the item
    for the caller to write (the Ray engine's driver does, so workers need no access to the scope).
    """

    def __init__(self, params: dict, known: dict[str, tuple[int, int, int, int]], thumbnails: bool, thumb_dir: Path | None = None):
        self.size = tuple(params["size"])
        self.resize = params["resize"]
        self.background = tuple(params["background"])
        self.max_pixels = params["max_pixels"]
        self.known = known  # sha256 -> (latent row, width, height, id)
        self.thumbnails = thumbnails
        self.thumb_dir = thumb_dir
        if thumb_dir is not None:
            thumb_dir.mkdir(exist_ok=True)

    def prepare(self, task: ReadTask) -> ReadItem:
        item = ReadItem(task)
        if task.found.error:
            item.error = task.found.error
            return item
        try:
            mode = os.stat(task.found.path).st_mode
            if not stat.S_ISREG(mode):
                raise ImageError("not a regular file")
            data = read_file(task.found.path)
            item.sha256 = sha256_bytes(data)
            if self.reuse(item):
                return item
            prepared = prepare_image(
                data, self.size, self.resize, self.background, self.max_pixels, THUMB_SIZE if self.thumbnails else None
            )
        except ImageError as exc:
            item.error = str(exc)
            return item
        item.pixels, item.width, item.height = prepared.pixels, prepared.width, prepared.height
        if self.thumbnails:
            if self.thumb_dir is None:
                item.thumbnail = prepared.thumbnail
            else:
                write_cache_file(self.thumb_dir / f"{task.id}.jpg", prepared.thumbnail)
        return item

    def reuse(self, item: ReadItem) -> bool:
        """Point an image whose content is already in the scope at its latent row instead of encoding it again."""
        if item.sha256 not in self.known:
            return False
        item.reuse_row, item.width, item.height, old_id = self.known[item.sha256]
        item.pixels = None
        if self.thumbnails and self.thumb_dir is not None:
            item.thumbnail = b""
            source = self.thumb_dir / f"{old_id}.jpg"
            if source.exists():
                write_cache_file(self.thumb_dir / f"{item.task.id}.jpg", source.read_bytes())
        return True

    def timed_out(self, task: ReadTask) -> ReadItem:
        return ReadItem(task, error="timed out while decoding (per-file time limit)")


def write_cache_file(path: Path, data: bytes) -> None:
    """Write a regenerable cache file (thumbnail) by rename, without the cost of fsync."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)

"""Training images in memory: load a folder, a list of files or an array at one size, and split off validation."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..errors import ImageError, InputError
from ..images import as_uint8_images, find_images, fit_image, parse_size, prepare_image, read_file

log = logging.getLogger(__name__)

SIZE_PROBE = 256  # files whose size is looked at to choose the training size
MIN_IMAGES = 4


@dataclass
class TrainingImages:
    """uint8 N x H x W x 3 pixels, a name per image (relative path or array index), and the files skipped."""

    pixels: np.ndarray
    names: list[str]
    source: str
    skipped: int = 0

    @property
    def size(self) -> tuple[int, int]:
        return int(self.pixels.shape[1]), int(self.pixels.shape[2])

    def fingerprint(self) -> str:
        """Changes when any pixel or name changes (a checkpoint is only resumed on the same data)."""
        digest = hashlib.sha256(np.ascontiguousarray(self.pixels).tobytes())
        digest.update("\n".join(self.names).encode())
        return digest.hexdigest()[:16]


def choose_size(sides: Sequence[int]) -> tuple[int, int]:
    """32 px for small images (icons, digits, thumbnails), else 64 px: what trains in minutes on a CPU."""
    if not sides:
        return 32, 32
    side = 32 if float(np.median(sides)) <= 48 else 64
    return side, side


def load_images(
    images,
    size: int | tuple[int, int] | None = None,
    resize: str = "center-crop",
    background: tuple[int, int, int] = (255, 255, 255),
    progress: bool = True,
) -> TrainingImages:
    """Load every usable image at one size; unreadable files are skipped with a warning."""
    size = parse_size(size)
    if isinstance(images, np.ndarray):
        pixels = as_uint8_images(images)
        target = size or choose_size([min(pixels.shape[1:3])])
        if pixels.shape[1:3] != target:
            pixels = np.stack([np.asarray(fit_image(Image.fromarray(p), target, resize, background)) for p in pixels])
        loaded = TrainingImages(pixels, [str(i) for i in range(len(pixels))], f"array of {len(pixels)} images")
    else:
        loaded = _load_files(images, size, resize, background, progress)
    if len(loaded.pixels) < MIN_IMAGES:
        raise InputError(f"{loaded.source}: {len(loaded.pixels)} usable images; training needs at least {MIN_IMAGES}")
    return loaded


def _load_files(source, size, resize, background, progress) -> TrainingImages:
    root, found = find_images(source)
    found = [f for f in found if not f.error]
    label = str(source) if isinstance(source, (str, os.PathLike)) else f"list of {len(found)} files"
    if not found:
        raise InputError(f"{label}: no image files found")
    size = size or choose_size(_probe_sides(found))
    pixels, names, skipped, first_error = [], [], 0, ""
    for item in tqdm(found, desc="load images", unit="img", disable=not progress, dynamic_ncols=True):
        try:
            prepared = prepare_image(read_file(item.path), size, resize, background, thumb_size=None)
        except ImageError as exc:
            log.warning("%s: skipped (%s)", item.relpath, exc)
            skipped += 1
            first_error = first_error or f"{item.relpath}: {exc}"
            continue
        pixels.append(prepared.pixels)
        names.append(item.relpath)
    if skipped:
        log.warning("%s: %d of %d files could not be used", label, skipped, len(found))
    if not pixels:
        raise InputError(f"{label}: no usable images ({skipped} files could not be read, e.g. {first_error})")
    stacked = np.stack(pixels) if pixels else np.zeros((0, *size, 3), np.uint8)
    return TrainingImages(stacked, names, str(Path(root)), skipped)


def _probe_sides(found) -> list[int]:
    sides = []
    step = max(1, len(found) // SIZE_PROBE)
    for item in found[::step]:
        try:
            with Image.open(item.path) as img:
                sides.append(min(img.size))
        except Exception:  # unreadable files are reported when loaded
            continue
    return sides


def split_validation(count: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices (sorted); validation gets ``fraction`` of the images, at least one."""
    if not 0.0 < fraction < 1.0:
        raise InputError(f"validation fraction {fraction}: must be between 0 and 1")
    n_val = min(count - 1, max(1, int(round(count * fraction))))
    order = np.random.default_rng(seed).permutation(count)
    return np.sort(order[n_val:]), np.sort(order[:n_val])

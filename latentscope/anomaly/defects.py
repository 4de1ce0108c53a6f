"""Synthetic local defects pasted into copies of normal images, with their masks (the *defects* protocol).

Kinds: ``blob`` (a solid ellipse), ``scratch`` (a thin line), ``blur`` (a
local Gaussian blur), ``colour`` (a local colour shift) and ``noise`` (a patch
of noise). Sizes scale with the image. Every defect is placed where it visibly
changes the image: the mask is the region's pixels that moved by more than
:data:`CHANGED` grey levels, and a placement that changes fewer than
:data:`MIN_CHANGED_FRACTION` of the region is redrawn elsewhere. Results are
reproducible given the seed: image ``i`` gets the defect drawn from
``(seed, i)`` whatever the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..errors import InputError

KINDS = ("blob", "scratch", "blur", "colour", "noise")
CHANGED = 16  # grey levels (max over channels) a pixel must move to count as defective
MIN_CHANGED_FRACTION = 0.3
MIN_CONTRAST = 90.0  # colour distance between a painted defect and the content it covers
ATTEMPTS = 20


@dataclass
class Defects:
    """Images with one defect each, their boolean masks (N x H x W) and the kind of each defect."""

    images: np.ndarray
    masks: np.ndarray
    kinds: np.ndarray


def check_kinds(kinds) -> tuple[str, ...]:
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if not kinds or unknown:
        raise InputError(f"defect kinds {unknown or 'none'}: choose from {', '.join(KINDS)}")
    return kinds


def paste_defects(images: np.ndarray, kinds=KINDS, seed: int = 0) -> Defects:
    """One defect per image (kinds in turn) on copies of uint8 N x H x W x 3 ``images``."""
    kinds = check_kinds(kinds)
    out, masks, chosen = [], [], []
    for index, image in enumerate(np.asarray(images, dtype=np.uint8)):
        rng = np.random.default_rng([seed, index])
        defected, mask, kind = paste_visible(image, kinds[index % len(kinds)], rng)
        out.append(defected)
        masks.append(mask)
        chosen.append(kind)
    if not out:
        return Defects(np.zeros((0, 1, 1, 3), np.uint8), np.zeros((0, 1, 1), bool), np.array([], dtype=str))
    return Defects(np.stack(out), np.stack(masks), np.array(chosen))


def paste_visible(image: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """Paste a defect of ``kind``, or of the next kind when this one cannot visibly change the image
    (a blur on a flat patch); returns the new image, its mask and the kind used."""
    start = KINDS.index(kind)
    for offset in range(len(KINDS)):
        kind = KINDS[(start + offset) % len(KINDS)]
        defected, mask, share = paste_one(image, kind, rng)
        if share >= MIN_CHANGED_FRACTION:
            break
    return defected, mask, kind


def paste_one(image: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """Paste one defect of ``kind``; returns the new image, its mask and the share of the region that changed."""
    painter = _PAINTERS[kind]
    best = None
    for _ in range(ATTEMPTS):
        region = _region(image.shape[:2], kind, rng)
        defected = painter(image, region, rng)
        moved = np.abs(defected.astype(np.int16) - image.astype(np.int16)).max(axis=2) > CHANGED
        mask = moved & region
        share = mask.sum() / max(1, region.sum())
        if best is None or share > best[2]:
            best = (defected, mask, share)
        if share >= MIN_CHANGED_FRACTION:
            break
    return best


def _region(shape: tuple[int, int], kind: str, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask of where the defect may act."""
    h, w = shape
    side = min(h, w)
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    if kind == "scratch":
        length = rng.uniform(0.35, 0.7) * side
        angle = rng.uniform(0, np.pi)
        cx, cy = rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h
        dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
        draw.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=255, width=max(1, round(side / 24)))
    else:
        low, high = (0.12, 0.22) if kind == "blob" else (0.2, 0.32)
        rh, rw = rng.uniform(low, high) * side / 2 * np.array([1.0, rng.uniform(0.7, 1.4)])
        cx, cy = rng.uniform(rw, w - rw), rng.uniform(rh, h - rh)
        if kind == "noise":
            draw.rectangle((cx - rw, cy - rh, cx + rw, cy + rh), fill=255)
        else:
            draw.ellipse((cx - rw, cy - rh, cx + rw, cy + rh), fill=255)
    return np.asarray(img) > 127


def _contrasting_colour(image: np.ndarray, region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    covered = image[region].astype(np.float64).mean(axis=0) if region.any() else np.full(3, 127.0)
    for _ in range(ATTEMPTS):
        colour = rng.integers(0, 256, 3).astype(np.float64)
        if np.linalg.norm(colour - covered) / np.sqrt(3) >= MIN_CONTRAST:
            return colour
    return 255.0 - covered


def _paint(image, region, rng):
    out = image.copy()
    out[region] = _contrasting_colour(image, region, rng).round().astype(np.uint8)
    return out


def _blur(image, region, rng):
    radius = rng.uniform(1.2, 2.2) * max(1.0, min(image.shape[:2]) / 32)
    blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)))
    out = image.copy()
    out[region] = blurred[region]
    return out


def _colour_shift(image, region, rng):
    """Rotate the colour channels and push the region towards a random tint."""
    tint = rng.uniform(-1, 1, 3)
    tint = tint / max(np.abs(tint).max(), 1e-6) * rng.uniform(70, 110)
    shifted = image[..., rng.permutation(3)].astype(np.float64) + tint
    shifted = np.where(shifted > 255, shifted - 2 * tint.clip(0), shifted)  # bounce off white instead of clipping
    shifted = np.where(shifted < 0, shifted - 2 * tint.clip(max=0), shifted)
    out = image.copy()
    out[region] = np.clip(shifted[region], 0, 255).round().astype(np.uint8)
    return out


def _noise(image, region, rng):
    noisy = image.astype(np.float64) + rng.normal(0, rng.uniform(50, 80), image.shape)
    out = image.copy()
    out[region] = np.clip(noisy[region], 0, 255).round().astype(np.uint8)
    return out


_PAINTERS = {"blob": _paint, "scratch": _paint, "blur": _blur, "colour": _colour_shift, "noise": _noise}

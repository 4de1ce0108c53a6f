"""Image sets that ship with installed packages: the digits demo set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def digits_array(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 handwritten digits as uint8 N x size x size x 3 (dark on white), and labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = (255 - digits.images / 16.0 * 255).round().astype(np.uint8)  # 8x8, 0 = ink
    resized = np.stack([np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BICUBIC)) for img in small])
    return np.repeat(resized[..., None], 3, axis=-1), digits.target.astype(np.int64)


def write_digits(folder: str | Path, size: int = 32, limit: int | None = None) -> Path:
    """Write the digits as PNG files ``<folder>/<label>/<index>.png`` (kept if already there)."""
    folder = Path(folder)
    images, labels = digits_array(size)
    count = len(images) if limit is None else min(limit, len(images))
    for index in range(count):
        target = folder / str(labels[index]) / f"{index:04d}.png"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[index]).save(target)
    return folder

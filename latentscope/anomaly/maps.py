"""Per-pixel error maps: measure, pool, smooth, reduce to an image score, and draw as heatmap overlays.

Maps are float arrays N x h x w. Work happens in torch (batched, on the
model's device); storage and drawing in NumPy.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F

MAX_MAP_SIDE = 64  # maps of larger images are average-pooled to at most this many pixels a side


def map_shape(image_size: tuple[int, int], max_side: int = MAX_MAP_SIDE) -> tuple[int, int]:
    """The (h, w) of the error map for images of ``image_size``: the image size, pooled by a whole factor."""
    factor = max(1, math.ceil(max(image_size) / max_side))
    return max(1, image_size[0] // factor), max(1, image_size[1] // factor)


def pool_to(maps: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """N x H x W -> N x h x w by area averaging (identity when the size already matches)."""
    if tuple(maps.shape[-2:]) == tuple(shape):
        return maps
    return F.adaptive_avg_pool2d(maps.unsqueeze(1), shape).squeeze(1)


def gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of N x h x w maps (reflect padding); ``sigma`` in map pixels, 0 = none."""
    if sigma <= 0:
        return maps
    kernel = gaussian_kernel(sigma).to(maps.device, maps.dtype)
    radius = len(kernel) // 2
    x = maps.unsqueeze(1)
    mode = "reflect" if min(maps.shape[-2:]) > radius else "replicate"
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode=mode), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode=mode), kernel.view(1, 1, -1, 1))
    return x.squeeze(1)


def box_smooth(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Mean over a ``size`` x ``size`` window (replicate padding): the plain baseline's smoothing."""
    if size <= 1:
        return maps
    pad = size // 2
    x = F.pad(maps.unsqueeze(1), (pad, size - 1 - pad, pad, size - 1 - pad), mode="replicate")
    return F.avg_pool2d(x, size, stride=1).squeeze(1)


def squared_error_map(images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Mean over channels of the squared difference: N x 3 x H x W (any range) -> N x H x W."""
    return (images - references).pow(2).mean(dim=1)


def ssim_error_map(images: torch.Tensor, references: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    """(1 - SSIM) / 2 per pixel, averaged over channels; images in [-1, 1]. Values in [0, 1]."""
    a = (images + 1) / 2
    b = (references + 1) / 2
    n, c, h, w = a.shape
    flat = lambda t: t.reshape(n * c, h, w)  # noqa: E731
    blur = lambda t: smooth(t, sigma)  # noqa: E731
    mu_a, mu_b = blur(flat(a)), blur(flat(b))
    var_a = blur(flat(a * a)) - mu_a**2
    var_b = blur(flat(b * b)) - mu_b**2
    cov = blur(flat(a * b)) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ((1 - ssim) / 2).reshape(n, c, h, w).mean(dim=1)


def top_k_mean(maps: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mean of the largest ``fraction`` of each map's values (at least one value): N x h x w -> N."""
    flat = maps.reshape(maps.shape[0], -1)
    k = max(1, int(round(fraction * flat.shape[1])))
    if k == 1:
        return flat.max(dim=1).values
    return flat.topk(k, dim=1).values.mean(dim=1)


def resize_maps(maps: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of N x h x w maps to ``shape`` (for pixel metrics and overlays)."""
    tensor = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32)).unsqueeze(1)
    if tuple(tensor.shape[-2:]) == tuple(shape):
        return tensor.squeeze(1).numpy()
    return F.interpolate(tensor, size=tuple(shape), mode="bilinear", align_corners=False).squeeze(1).numpy()


# --------------------------------------------------------------------------- drawing

# "inferno"-like ramp through black, purple, orange and pale yellow (perceptually ordered, readable on grey)
_RAMP = np.array(
    [(0, 0, 4), (40, 11, 84), (101, 21, 110), (159, 42, 99), (212, 72, 66), (245, 125, 21), (250, 193, 39), (252, 255, 164)],
    dtype=np.float64,
)


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) -> uint8 RGB of shape (..., 3)."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)), 0.0, 1.0) * (len(_RAMP) - 1)
    low = np.floor(v).astype(int).clip(0, len(_RAMP) - 2)
    frac = (v - low)[..., None]
    return np.round(_RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac).astype(np.uint8)


def overlay(image: np.ndarray, error_map: np.ndarray, vmin: float, vmax: float, opacity: float = 0.65) -> np.ndarray:
    """Blend a heatmap over an RGB uint8 image: low values leave the image visible, high ones cover it."""
    height, width = image.shape[:2]
    resized = resize_maps(error_map[None], (height, width))[0]
    level = np.clip((resized - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    alpha = (opacity * np.sqrt(level))[..., None]
    blended = image.astype(np.float64) * (1 - alpha) + colormap(level).astype(np.float64) * alpha
    return np.round(blended).astype(np.uint8)


def png_bytes(pixels: np.ndarray, scale: int = 1) -> bytes:
    """An RGB uint8 array as PNG bytes, optionally enlarged by a whole factor (nearest neighbour)."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(pixels))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=False, compress_level=3)
    return out.getvalue()

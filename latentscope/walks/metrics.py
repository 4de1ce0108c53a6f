"""How smooth a walk is, and how far it strays from the data.

* per-step image distance between consecutive frames: RMS pixel distance
  (the square root of the MSE, pixels in [0, 1]), MSE itself, and structural
  dissimilarity 1 - SSIM (Gaussian window, sigma 1.5, as Wang et al. 2004);
  LPIPS is added when the ``lpips`` package and its backbone weights are already
  on this machine (nothing is downloaded);
* evenness = 1 - Gini coefficient of the RMS step distances (1 = every step
  changes the image equally, 0 = all the change in one step);
* each frame's distance to its nearest real latent (RMS per latent element),
  also divided by the median nearest-neighbour distance among the real latents,
  so 1.0 reads "as far from the data as a typical real image is from its
  nearest neighbour".
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from .graph import flat, nearest_rows

log = logging.getLogger(__name__)

SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
SSIM_TRUNCATE = 3.5
SPACING_SAMPLE = 2000


def as_unit_float(pixels: np.ndarray) -> np.ndarray:
    """uint8 N x H x W x 3 -> float64 in [0, 1]."""
    return np.asarray(pixels, np.float64) / 255.0


def mse_steps(pixels: np.ndarray) -> np.ndarray:
    """Mean squared pixel difference (pixels in [0, 1]) between consecutive frames."""
    frames = as_unit_float(pixels)
    return ((frames[1:] - frames[:-1]) ** 2).reshape(len(frames) - 1, -1).mean(axis=1)


def ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Structural similarity of two H x W x 3 images (uint8 or [0, 1] floats), averaged over channels.

    Gaussian window (sigma 1.5, 11 x 11), sample covariances, and the mean taken
    away from a window-radius border, as in the reference implementation.
    """
    x, y = (as_unit_float(v) if v.dtype == np.uint8 else np.asarray(v, np.float64) for v in (x, y))
    blur = lambda img: gaussian_filter(img, sigma=(SSIM_SIGMA, SSIM_SIGMA, 0), truncate=SSIM_TRUNCATE, mode="reflect")  # noqa: E731
    radius = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    correction = (2 * radius + 1) ** 2 / ((2 * radius + 1) ** 2 - 1)
    mu_x, mu_y = blur(x), blur(y)
    var_x = (blur(x * x) - mu_x**2) * correction
    var_y = (blur(y * y) - mu_y**2) * correction
    cov = (blur(x * y) - mu_x * mu_y) * correction
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    score = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    if min(score.shape[:2]) > 2 * radius:
        score = score[radius:-radius, radius:-radius]
    return float(score.mean())


def ssim_steps(pixels: np.ndarray) -> np.ndarray:
    return np.array([ssim(pixels[i], pixels[i + 1]) for i in range(len(pixels) - 1)])


def gini(values) -> float:
    """Gini coefficient of non-negative values (0 = all equal; 0 when all are zero)."""
    values = np.sort(np.maximum(np.asarray(values, np.float64).ravel(), 0.0))
    n, total = len(values), values.sum()
    if n == 0 or total == 0.0:
        return 0.0
    ranks = np.arange(1, n + 1)
    return float((2.0 * (ranks * values).sum()) / (n * total) - (n + 1.0) / n)


def evenness(values) -> float:
    return 1.0 - gini(values)


def typical_spacing(real_latents: np.ndarray, sample: int = SPACING_SAMPLE, seed: int = 0) -> float:
    """Median distance (RMS per element) from a real latent to its nearest other real latent."""
    points = flat(real_latents)
    if len(points) < 2:
        return float("nan")
    rows = np.random.default_rng(seed).choice(len(points), min(sample, len(points)), replace=False)
    chosen = np.zeros(len(points), bool)
    chosen[rows] = True
    _, distances = nearest_rows(points[chosen], points, 2)
    # the nearest is the point itself (distance 0) unless a duplicate exists; both count as 0 spacing correctly
    return float(np.median(distances[:, 1]) / np.sqrt(points.shape[1]))


def nearest_real(latents: np.ndarray, real_latents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each frame latent: the row of its nearest real latent and the RMS-per-element distance to it."""
    indices, distances = nearest_rows(latents, real_latents, 1)
    return indices[:, 0], distances[:, 0] / np.sqrt(flat(latents).shape[1])


# ------------------------------------------------------------------------ LPIPS (optional, local weights only)


def lpips_model():
    """An LPIPS network when the ``lpips`` package and its AlexNet weights are already local; else None."""
    try:
        import lpips  # noqa: F401
        import torch
    except ImportError:
        return None
    hub = Path(os.environ.get("TORCH_HOME") or Path(torch.hub.get_dir()))
    checkpoints = hub / "checkpoints" if (hub / "checkpoints").is_dir() else hub
    if not any(checkpoints.glob("alexnet-*.pth")):
        log.info("LPIPS skipped: no AlexNet weights under %s (nothing is downloaded)", checkpoints)
        return None
    import lpips

    return lpips.LPIPS(net="alex", verbose=False).eval()


def lpips_steps(pixels: np.ndarray, model) -> np.ndarray:
    import torch

    tensor = torch.from_numpy(as_unit_float(pixels).transpose(0, 3, 1, 2).astype(np.float32) * 2 - 1)
    with torch.inference_mode():
        return model(tensor[:-1], tensor[1:]).reshape(-1).numpy().astype(np.float64)


# ------------------------------------------------------------------------ summary


@dataclass
class WalkMetrics:
    """Smoothness of one walk. Step arrays have one entry per pair of consecutive frames."""

    rms_steps: list[float]
    mse_steps: list[float]
    dssim_steps: list[float]  # 1 - SSIM
    lpips_steps: list[float] | None = None
    nearest_real: list[float] | None = None  # per frame, RMS per latent element
    nearest_real_rows: list[int] | None = None
    spacing: float | None = None  # typical real-to-real nearest distance, same units
    summary: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def walk_metrics(pixels: np.ndarray, latents: np.ndarray | None = None, real_latents: np.ndarray | None = None,
                 spacing: float | None = None, use_lpips: bool = True) -> WalkMetrics:
    """Metrics of a walk from its frames (uint8 F x H x W x 3) and, for nearest-real distances, latents."""
    if len(pixels) < 2:
        raise ValueError("a walk needs at least 2 frames to measure")
    mse = mse_steps(pixels)
    rms = np.sqrt(mse)
    dssim = 1.0 - ssim_steps(pixels)
    model = lpips_model() if use_lpips else None
    lp = lpips_steps(pixels, model) if model is not None else None
    summary = {
        "frames": int(len(pixels)),
        "mean_rms_step": float(rms.mean()),
        "max_rms_step": float(rms.max()),
        "mean_mse_step": float(mse.mean()),
        "max_mse_step": float(mse.max()),
        "mean_dssim_step": float(dssim.mean()),
        "max_dssim_step": float(dssim.max()),
        "evenness": evenness(rms),
        "evenness_dssim": evenness(dssim),
    }
    if lp is not None:
        summary.update(mean_lpips_step=float(lp.mean()), max_lpips_step=float(lp.max()), evenness_lpips=evenness(lp))
    metrics = WalkMetrics(rms.tolist(), mse.tolist(), dssim.tolist(), None if lp is None else lp.tolist(), summary=summary)
    if latents is not None and real_latents is not None and len(real_latents):
        rows, distances = nearest_real(latents, real_latents)
        spacing = typical_spacing(real_latents) if spacing is None else spacing
        metrics.nearest_real, metrics.nearest_real_rows, metrics.spacing = distances.tolist(), rows.tolist(), spacing
        summary.update(
            mean_nearest_real=float(distances.mean()),
            max_nearest_real=float(distances.max()),
            mean_nearest_real_relative=float(distances.mean() / spacing) if spacing else float("nan"),
        )
    return metrics

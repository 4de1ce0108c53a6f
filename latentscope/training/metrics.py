"""Image-quality metrics for validation: PSNR and SSIM per image, on the uint8 scale."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PEAK = 255.0


def to_pixel_scale(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> float values rounded to the 0..255 grid (what is saved and shown)."""
    return ((images.float().clamp(-1, 1) + 1.0) * 127.5).round()


def psnr(reference: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of N x C x H x W tensors on the 0..255 scale (capped at 100 dB for identical images)."""
    mse = (reference.float() - test.float()).pow(2).flatten(1).mean(1)
    return (10.0 * torch.log10(PEAK**2 / mse.clamp_min(PEAK**2 * 1e-10))).clamp_max(100.0)


def _gaussian_window(size: int = 7, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(reference: torch.Tensor, test: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Per-image mean SSIM (Wang et al. 2004, Gaussian window, channels averaged) on the 0..255 scale."""
    x, y = reference.float() / PEAK, test.float() / PEAK
    channels = x.shape[1]
    window = min(window, x.shape[-1], x.shape[-2])
    kernel = _gaussian_window(window).to(x.device).expand(channels, 1, window, window).contiguous()

    def blur(v):
        return F.conv2d(v, kernel, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    value = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return value.flatten(1).mean(1)


def ssim_loss(reference: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """1 - SSIM for images in [-1, 1] (differentiable; used as a training loss term)."""
    return 1.0 - ssim((reference + 1.0) * 127.5, (test + 1.0) * 127.5).mean()


def summarise(values: torch.Tensor | np.ndarray) -> float:
    return float(torch.as_tensor(values, dtype=torch.float64).mean())

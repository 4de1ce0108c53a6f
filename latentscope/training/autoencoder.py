"""Phase 1: fit a compact diffusers ``AutoencoderKL`` on the images (reconstruction + tiny KL)."""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from .metrics import psnr, ssim, to_pixel_scale
from .plan import Plan

log = logging.getLogger(__name__)

KL_WEIGHT = 1e-6
EVAL_BATCH = 128
INITIAL_LOGVAR = -8.0
NORM_GROUPS = 8
FINE_AFTER_COARSE_LR = 0.5  # peak learning rate at full size after the half-size stage, relative to the plan's


def build_autoencoder(plan: Plan):
    from diffusers import AutoencoderKL

    levels = len(plan.widths)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=plan.widths,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        layers_per_block=1,
        latent_channels=plan.latent_channels,
        norm_num_groups=NORM_GROUPS,
        sample_size=list(plan.size) if plan.size[0] != plan.size[1] else plan.size[0],
        mid_block_add_attention=False,  # attention at the bottleneck costs time and buys no PSNR at these sizes
        scaling_factor=1.0,
    )
    start_with_small_variance(vae, plan.latent_channels)
    # channels-last convolutions run about 1.3x faster on CPU at these widths (oneDNN); weights save as usual
    return vae.to(memory_format=torch.channels_last)


@torch.no_grad()
def start_with_small_variance(vae, channels: int, logvar: float = INITIAL_LOGVAR) -> None:
    """Start the posterior's log-variance at ``logvar`` instead of 0.

    At the default initialisation the posterior std is about 1 while the means
    are small, so the decoder first sees mostly noise and spends thousands of
    steps learning to shrink it; with std ~ 0.02 it learns to reconstruct at
    once, and the (tiny) KL term still regularises the variance from there.
    """
    vae.quant_conv.weight[channels:].zero_()
    vae.quant_conv.bias[channels:].fill_(logvar)


def to_model_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 N x 3 x H x W -> float in [-1, 1], channels-last like the model built by :func:`build_autoencoder`."""
    return pixels.float().div_(127.5).sub_(1.0).contiguous(memory_format=torch.channels_last)


def halve(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 N x 3 x H x W -> uint8 N x 3 x H/2 x W/2, each pixel the rounded mean of a 2 x 2 block."""
    return F.avg_pool2d(pixels.float(), 2).round_().to(torch.uint8)


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


LOSS_NAME = "MSE"


def reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error (what PSNR measures).

    Measured on held-out colour icons at 32 px, (16, 32, 64) widths, batch 8, 800 steps: MSE alone
    reached 19.2 dB where L1 + MSE reached 18.1 dB half-way, 20.3 vs 20.1 dB at the end (benchmarks/RESULTS.md).
    """
    return F.mse_loss(reconstruction, target)


def make_step(vae, pixels: torch.Tensor, kl_weight: float = KL_WEIGHT, device: torch.device | str = "cpu"):
    """The loss of one batch: images picked by index, flipped at random, encoded with a posterior sample, decoded."""

    def step(indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        images = random_flip(to_model_range(pixels[indices]), generator).to(device, non_blocking=True)
        posterior = vae.encode(images).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator).to(device)
        latent = posterior.mean + posterior.std * noise
        reconstruction = vae.decode(latent).sample
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        return reconstruction_loss(reconstruction, images) + kl_weight * kl

    return step


@torch.no_grad()
def reconstruct(vae, pixels: torch.Tensor, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """uint8 N x 3 x H x W -> reconstructions on the 0..255 grid (posterior means, like ``Codec``)."""
    was_training = vae.training
    vae.eval()
    parts = []
    for start in range(0, len(pixels), batch_size):
        images = to_model_range(pixels[start : start + batch_size])
        parts.append(to_pixel_scale(vae.decode(vae.encode(images).latent_dist.mode()).sample))
    vae.train(was_training)
    return torch.cat(parts)


def evaluate(vae, pixels: torch.Tensor) -> dict:
    """Mean PSNR (dB) and SSIM of reconstructions of uint8 N x 3 x H x W images."""
    recon = reconstruct(vae, pixels)
    return {"psnr": float(psnr(pixels, recon).mean()), "ssim": float(ssim(pixels, recon).mean())}


@torch.no_grad()
def encode_means(vae, pixels: torch.Tensor, flip: bool = False, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Unscaled posterior means of uint8 images (optionally mirrored)."""
    vae.eval()
    parts = []
    for start in range(0, len(pixels), batch_size):
        images = to_model_range(pixels[start : start + batch_size])
        parts.append(vae.encode(images.flip(-1) if flip else images).latent_dist.mode())
    return torch.cat(parts)


def calibrate_scaling(vae, means: torch.Tensor) -> tuple[float, float]:
    """Set ``shift_factor`` and ``scaling_factor`` so scaled latents have zero mean and unit variance (SD convention)."""
    shift = float(means.mean())
    scale = float(1.0 / means.std().clamp_min(1e-6))
    vae.register_to_config(scaling_factor=scale, shift_factor=shift)
    log.info("latent scaling: shift_factor %.4f, scaling_factor %.4f", shift, scale)
    return scale, shift


def pixels_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W x 3 (NumPy) -> uint8 N x 3 x H x W (torch, contiguous)."""
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).contiguous()

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
# one group: each normalisation spans all of a layer's channels. With the warm start, over 60,000 images at 32 px
# (the plan's length then), this gained 0.67 dB on held-out photo patches and 0.28 dB on icons over 8 groups
# (RESULTS.md)
NORM_GROUPS = 1
FINE_AFTER_COARSE_LR = 0.5  # peak learning rate at full size after the half-size stage, relative to the plan's
ANCHOR_SHARE = 0.25  # of the first stage's steps, with each half trained against the best linear code (see make_step)
ANCHOR_FIT_IMAGES = 2048  # images whose blocks fit that linear code (a sample is as good as all of them)


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
    start_with_identity_blocks(vae)
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


@torch.no_grad()
def start_with_identity_blocks(vae) -> None:
    """Zero the last convolution of every ResNet block, so each block starts as the identity.

    The network then starts as a short chain of convolutions and learns the residual
    branches from there ("zero-init residual"; benchmarks/RESULTS.md, warm-start probes).
    """
    from diffusers.models.resnet import ResnetBlock2D

    for block in (m for m in vae.modules() if isinstance(m, ResnetBlock2D)):
        block.conv2.weight.zero_()
        block.conv2.bias.zero_()


class BlockPCA(torch.nn.Module):
    """The best linear code with the autoencoder's latent layout: each ``factor`` x ``factor`` block of
    pixels (model range) maps to ``channels`` values, the block's first principal components.

    Trained from scratch, the encoder and decoder must first agree on a code, and that is slow:
    on held-out photo patches at 32 px this linear code keeps 31.1 dB, where the autoencoder trained
    from scratch had 24.0 dB after 12,000 images. Each half alone, trained against this fixed code,
    learns quickly, so training starts that way (see :func:`make_step`).
    """

    def __init__(self, components: torch.Tensor, mean: torch.Tensor, factor: int):
        super().__init__()
        self.factor = factor
        self.register_buffer("weight", components.reshape(len(components), 3, factor, factor).float())
        self.register_buffer("mean", mean.reshape(3, factor, factor).float())

    @classmethod
    @torch.no_grad()
    def fit(cls, pixels: torch.Tensor, factor: int, channels: int, chunk: int = 64) -> "BlockPCA":
        """Fit on uint8 N x 3 x H x W images (at most ``ANCHOR_FIT_IMAGES``, evenly spaced)."""
        sample = pixels[torch.linspace(0, len(pixels) - 1, min(len(pixels), ANCHOR_FIT_IMAGES)).round().long()]
        dims = 3 * factor * factor
        total, outer, count = torch.zeros(dims, dtype=torch.float64), torch.zeros(dims, dims, dtype=torch.float64), 0
        for start in range(0, len(sample), chunk):
            images = sample[start : start + chunk].float().div_(127.5).sub_(1.0)
            blocks = F.unfold(images, factor, stride=factor).transpose(1, 2).reshape(-1, dims).double()
            total += blocks.sum(0)
            outer += blocks.T @ blocks
            count += len(blocks)
        mean = total / count
        covariance = outer / count - torch.outer(mean, mean)
        _, vectors = torch.linalg.eigh(covariance)  # ascending eigenvalues
        components = vectors.flip(1).T[:channels]
        if len(components) < channels:  # more latent channels than block values: the rest start at zero
            components = torch.cat([components, components.new_zeros(channels - len(components), dims)])
        return cls(components, mean, factor)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return F.conv2d(images - self.mean.repeat(1, *self._blocks(images)), self.weight, stride=self.factor)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        images = F.conv_transpose2d(codes, self.weight, stride=self.factor)
        return images + self.mean.repeat(1, *self._blocks(images))

    def _blocks(self, images: torch.Tensor) -> tuple[int, int]:
        return images.shape[-2] // self.factor, images.shape[-1] // self.factor


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


def make_step(vae, pixels: torch.Tensor, kl_weight: float = KL_WEIGHT, device: torch.device | str = "cpu",
              anchor: BlockPCA | None = None, anchor_steps: int = 0):
    """The loss of one batch: images picked by index, flipped at random, encoded with a posterior sample, decoded.

    For the first ``anchor_steps`` steps each half trains against the fixed linear code ``anchor``
    instead: the encoder's means through the linear decoder, the decoder from the linear codes.
    Then the two halves already agree closely and train jointly from there. With this and
    :func:`start_with_identity_blocks`, the automatic plan's held-out PSNR went from 28.9 to 31.7 dB on
    photo patches at 32 px and from 27.3 to 31.6 dB at 64 px, on icons from 25.5 to 26.3 dB (32 px) and
    28.9 to 30.7 dB (64 px), in the same time (benchmarks/RESULTS.md). Anchoring half of the steps
    instead of a quarter cost the icons 1 dB.
    """
    anchor = anchor.to(device) if anchor is not None else None

    def step(indices: torch.Tensor, generator: torch.Generator, number: int) -> torch.Tensor:
        images = random_flip(to_model_range(pixels[indices]), generator).to(device, non_blocking=True)
        posterior = vae.encode(images).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator).to(device)
        kl = kl_weight * posterior.kl().mean() / posterior.mean[0].numel()
        if anchor is not None and number < anchor_steps:
            encoder_loss = reconstruction_loss(anchor.decode(posterior.mean), images)
            decoder_loss = reconstruction_loss(vae.decode(anchor.encode(images)).sample, images)
            return encoder_loss + decoder_loss + kl
        reconstruction = vae.decode(posterior.mean + posterior.std * noise).sample
        return reconstruction_loss(reconstruction, images) + kl

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

"""Phase 2: fit a diffusers ``UNet2DModel`` denoiser on the autoencoder's scaled latents.

Cosine noise schedule (``squaredcos_cap_v2``, 1000 steps) with v-prediction,
which stays well conditioned at the noisiest steps where the schedule's signal
goes to zero; min-SNR loss weighting (gamma 5) balances the noise levels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TRAIN_TIMESTEPS = 1000
MIN_SNR_GAMMA = 5.0
VALIDATION_LEVELS = 8


def build_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=TRAIN_TIMESTEPS,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        clip_sample=False,
    )


def build_unet(latent_shape: tuple[int, int, int], widths: tuple[int, ...]):
    from diffusers import UNet2DModel

    channels, height, width = latent_shape
    levels = len(widths)
    # attention only at the coarsest level, where it is cheap
    down = ("DownBlock2D",) * (levels - 1) + ("AttnDownBlock2D",)
    up = ("AttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1)
    return UNet2DModel(
        sample_size=height if height == width else [height, width],
        in_channels=channels,
        out_channels=channels,
        block_out_channels=widths,
        down_block_types=down,
        up_block_types=up,
        layers_per_block=2,
        norm_num_groups=16,
        attention_head_dim=32,
        add_attention=True,
    )


class DiffusionLoss:
    """Noise the latents to random timesteps and regress the v target, min-SNR weighted."""

    def __init__(self, unet, scheduler, device: torch.device | str = "cpu"):
        self.unet = unet
        self.device = device
        alphas = scheduler.alphas_cumprod.to(device, torch.float32)
        self.sqrt_alpha = alphas.sqrt()
        self.sqrt_one_minus = (1.0 - alphas).sqrt()
        snr = alphas / (1.0 - alphas)
        self.weight = snr.clamp(max=MIN_SNR_GAMMA) / (snr + 1.0)  # min-SNR weighting for v-prediction

    def __call__(self, latents: torch.Tensor, timesteps: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        latents, timesteps, noise = latents.to(self.device), timesteps.to(self.device), noise.to(self.device)
        a = self.sqrt_alpha[timesteps].view(-1, 1, 1, 1)
        s = self.sqrt_one_minus[timesteps].view(-1, 1, 1, 1)
        noisy = a * latents + s * noise
        target = a * noise - s * latents
        prediction = self.unet(noisy, timesteps).sample
        per_example = F.mse_loss(prediction, target, reduction="none").flatten(1).mean(1)
        return (per_example * self.weight[timesteps]).mean()


def make_step(loss: DiffusionLoss, latents: torch.Tensor):
    def step(indices: torch.Tensor, generator: torch.Generator, number: int) -> torch.Tensor:
        batch = latents[indices]
        timesteps = torch.randint(0, TRAIN_TIMESTEPS, (len(batch),), generator=generator)
        noise = torch.randn(batch.shape, generator=generator)
        return loss(batch, timesteps, noise)

    return step


def make_validation(loss: DiffusionLoss, latents: torch.Tensor, seed: int):
    """Loss on held-out latents at fixed noise levels and fixed noise (comparable across epochs)."""
    generator = torch.Generator().manual_seed(seed)
    levels = torch.linspace(0, TRAIN_TIMESTEPS - 1, VALIDATION_LEVELS).round().long()
    timesteps = levels.repeat_interleave(len(latents))
    repeated = latents.repeat(VALIDATION_LEVELS, 1, 1, 1)
    noise = torch.randn(repeated.shape, generator=generator)

    @torch.no_grad()
    def validate() -> dict:
        loss.unet.eval()
        total = 0.0
        for i in range(0, len(repeated), 256):
            chunk = slice(i, i + 256)
            total += float(loss(repeated[chunk], timesteps[chunk], noise[chunk])) * len(repeated[chunk])
        return {"val_loss": total / len(repeated)}

    return validate

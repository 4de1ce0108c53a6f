"""Diffusion reconstructions of a batch at several noise levels, and their raw errors.

For each image and each level ``t``: noise its latent to ``t`` (``draws`` times,
with noise drawn from ``(seed, image id, draw)`` so that a result never depends
on the batch it was computed in), denoise back with ``steps`` DDIM steps,
decode, and measure the error against the input image. Level 0 is the plain
autoencoder round trip (deterministic: one draw).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from ..denoiser import check_level, check_steps
from ..errors import InputError
from .maps import map_shape, pool_to, squared_error_map

log = logging.getLogger(__name__)

# Level 0 (the round trip) plus one noised level: on every benchmark task (digits, photos and icons at 32 and
# 64 px) a level at 0.25 as well ranked no better, at twice the model calls (benchmarks/RESULTS.md, cost against quality).
DEFAULT_LEVELS = (0.0, 0.1)
DEFAULT_STEPS = 5
DEFAULT_DRAWS = 4


@dataclass
class LevelErrors:
    """Raw errors of a batch: N x L pixel error maps (mean over draws, pooled to the map size) and
    N x L latent errors (mean squared difference of the reconstructed latent, mean over draws)."""

    maps: np.ndarray  # float32 N x L x h x w
    latent: np.ndarray  # float32 N x L

    @staticmethod
    def concat(parts: list["LevelErrors"]) -> "LevelErrors":
        return LevelErrors(np.concatenate([p.maps for p in parts]), np.concatenate([p.latent for p in parts]))

    def take(self, index) -> "LevelErrors":
        return LevelErrors(self.maps[index], self.latent[index])


def check_levels(levels) -> tuple[float, ...]:
    values = tuple(sorted({check_level(t) for t in levels}))
    if not values:
        raise InputError("levels: give at least one noise level between 0 and 1")
    return values


def check_draws(draws: int) -> int:
    draws = int(draws)
    if not 1 <= draws <= 1000:
        raise InputError(f"draws={draws}: must be between 1 and 1000")
    return draws


class Reconstructor:
    """Measures diffusion-reconstruction errors with a :class:`~latentscope.codec.Codec` and a
    :class:`~latentscope.denoiser.Denoiser` that works in the codec's scaled latent space."""

    def __init__(self, codec, denoiser, levels=DEFAULT_LEVELS, steps: int = DEFAULT_STEPS, draws: int = DEFAULT_DRAWS,
                 seed: int = 0):
        self.codec = codec
        self.denoiser = denoiser
        self.levels = check_levels(levels)
        self.steps = check_steps(steps)
        self.draws = check_draws(draws)
        self.seed = int(seed)

    def noise(self, ids: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
        """Noise of each (image, draw), len(ids) * draws x C x h x w, the same in any batch."""
        out = torch.empty(len(ids), self.draws, *shape)
        for row, image_id in enumerate(ids):
            generator = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, int(image_id)]).generate_state(1)[0]))
            out[row] = torch.randn(self.draws, *shape, generator=generator)
        return out.reshape(len(ids) * self.draws, *shape)

    def calls_per_image(self) -> dict[str, int]:
        """Denoiser and decoder forward passes spent on one image (for throughput accounting)."""
        noisy = [t for t in self.levels if self.denoiser.timestep_for(t) > 0]
        unet = sum(len(self.denoiser.schedule(t, self.steps)) for t in noisy) * self.draws
        decoder = len(noisy) * self.draws + (len(self.levels) - len(noisy))
        return {"denoiser": unet, "decoder": decoder}

    @torch.inference_mode()
    def measure(self, latents: np.ndarray, images: torch.Tensor, ids: np.ndarray) -> LevelErrors:
        """Errors of ``latents`` (N x C x h x w, scaled) against ``images`` (N x 3 x H x W in [-1, 1])."""
        device = self.codec.device
        z = torch.as_tensor(np.asarray(latents, dtype=np.float32), device=device)
        target = images.to(device, torch.float32)
        n = len(z)
        shape = map_shape(tuple(target.shape[-2:]))
        maps = torch.zeros(n, len(self.levels), *shape, device=device)
        latent = torch.zeros(n, len(self.levels), device=device)
        noise = None
        for col, t in enumerate(self.levels):
            if self.denoiser.timestep_for(t) == 0:
                rebuilt, draws = z, 1
            else:
                if noise is None:
                    noise = self.noise(np.asarray(ids), tuple(z.shape[1:])).to(device)
                repeated = z.repeat_interleave(self.draws, dim=0)
                rebuilt, draws = self.denoiser.reconstruct(repeated, t, self.steps, noise=noise), self.draws
            decoded = self.codec.decode(rebuilt)
            errors = squared_error_map(decoded, target.repeat_interleave(draws, dim=0))
            maps[:, col] = pool_to(errors, shape).reshape(n, draws, *shape).mean(dim=1)
            source = z.repeat_interleave(draws, dim=0)
            latent[:, col] = (rebuilt - source).pow(2).mean(dim=(1, 2, 3)).reshape(n, draws).mean(dim=1)
        return LevelErrors(maps.cpu().numpy(), latent.cpu().numpy())

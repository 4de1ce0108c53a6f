"""A diffusion model over scaled latents: add noise to a level t, denoise back with DDIM, invert.

The model is a diffusers ``UNet2DModel`` (in ``unet/``) with the noise schedule of
its scheduler (``scheduler/``), as written by ``latentscope train`` or any
unconditional latent-diffusion pipeline. Noise levels are given as a fraction
``t`` in [0, 1] of the training schedule; sampling and inversion are
deterministic DDIM (eta = 0) with the final step to alpha = 1, so that
``denoise(invert(z, t), t)`` returns ``z`` up to the discretisation error.

Shapes: latents are N x C x h x w float32 tensors in the codec's scaled space.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from .codec import ModelLocation, load_model, locate_component
from .errors import InputError, ModelError
from .runtime import resolve_device, resolve_dtype

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
MAX_FEATURE_VALUES = 4096  # features are average-pooled (halving the grid) until C x h x w is at most this


def load_alphas_cumprod(location: ModelLocation) -> tuple[torch.Tensor, str]:
    """The cumulative alphas and prediction type of the scheduler stored beside the UNet."""
    import diffusers

    try:
        config = diffusers.DDPMScheduler.load_config(location.source, subfolder="scheduler")
    except Exception as exc:
        raise ModelError(f"{location.source}: no readable scheduler/ config beside unet/ ({exc})") from None
    cls = getattr(diffusers, str(config.get("_class_name")), None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        cls = diffusers.DDPMScheduler
    scheduler = cls.from_config(config)
    alphas = getattr(scheduler, "alphas_cumprod", None)
    if alphas is None:
        raise ModelError(f"{location.source}: scheduler {cls.__name__} has no alphas_cumprod (not a DDPM-family schedule)")
    prediction = getattr(scheduler.config, "prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise ModelError(f"{location.source}: prediction_type {prediction!r} is not supported ({', '.join(PREDICTION_TYPES)})")
    return torch.as_tensor(alphas, dtype=torch.float64), prediction


def check_level(t: float) -> float:
    t = float(t)
    if not 0.0 <= t <= 1.0:
        raise InputError(f"noise level t={t}: must be between 0 and 1")
    return t


def check_steps(steps: int) -> int:
    steps = int(steps)
    if steps < 1 or steps > 10_000:
        raise InputError(f"steps={steps}: must be between 1 and 10000")
    return steps


class Denoiser:
    """UNet2DModel + noise schedule, with DDIM denoising and inversion over scaled latents."""

    def __init__(self, unet, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon", device="auto", dtype="auto", reference=None):
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        if next(unet.parameters()).dtype != self.dtype:
            unet = unet.to(dtype=self.dtype)
        self.unet = unet.to(self.device).eval().requires_grad_(False)
        self.alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu()
        self.prediction_type = prediction_type
        self.reference = reference

    @classmethod
    def from_pretrained(cls, reference: str | os.PathLike, device="auto", dtype="auto") -> "Denoiser":
        location = locate_component(reference, "unet")
        if location.subfolder != "unet":
            raise ModelError(f"--model {reference}: no unet/ folder; a denoiser needs a model trained with 'latentscope train'")
        device = resolve_device(device)
        unet = load_model(location, "unet", resolve_dtype(dtype, device))
        alphas, prediction = load_alphas_cumprod(location)
        return cls(unet, alphas, prediction, device, dtype, reference=str(reference))

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def timestep_for(self, t: float) -> int:
        """The training timestep of noise level ``t`` (0 = clean, 1 = the last timestep)."""
        return int(round(check_level(t) * (self.num_train_timesteps - 1)))

    def schedule(self, t: float, steps: int) -> list[int]:
        """Descending DDIM timesteps from level ``t``; consecutive duplicates removed."""
        top = self.timestep_for(t)
        if top == 0:
            return []
        grid = np.linspace(top, 0, check_steps(steps) + 1)[:-1]
        return list(dict.fromkeys(int(round(v)) for v in grid if round(v) > 0))

    def _alpha(self, timestep: int | None) -> torch.Tensor:
        return torch.tensor(1.0, dtype=torch.float64) if timestep is None else self.alphas_cumprod[timestep]

    # ------------------------------------------------------------------ model calls

    def _eps_and_x0(self, x: torch.Tensor, timestep: int) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = self._alpha(timestep).to(x.device, torch.float32)
        stamp = torch.full((x.shape[0],), timestep, device=self.device, dtype=torch.long)
        out = self.unet(x.to(self.dtype), stamp).sample.float()
        a, s = alpha.sqrt(), (1 - alpha).sqrt()
        if self.prediction_type == "epsilon":
            eps = out
            x0 = (x - s * eps) / a
        elif self.prediction_type == "v_prediction":
            x0 = a * x - s * out
            eps = s * x + a * out
        else:
            x0 = out
            eps = (x - a * x0) / s
        return eps, x0

    @staticmethod
    def _move(x0: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        alpha = alpha.to(x0.device, torch.float32)
        return alpha.sqrt() * x0 + (1 - alpha).sqrt() * eps

    # ------------------------------------------------------------------ public API

    @torch.inference_mode()
    def add_noise(self, latents: torch.Tensor, t: float, noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Forward diffusion to level ``t``: sqrt(a) z + sqrt(1 - a) noise."""
        latents = latents.to(self.device, torch.float32)
        timestep = self.timestep_for(t)
        if timestep == 0:
            return latents.clone()
        if noise is None:
            noise = torch.randn(latents.shape, generator=generator, device=generator.device if generator else "cpu")
        return self._move(latents, noise.to(self.device, torch.float32), self._alpha(timestep))

    @torch.inference_mode()
    def denoise(self, noisy: torch.Tensor, t: float, steps: int) -> torch.Tensor:
        """Deterministic DDIM from level ``t`` back to clean latents in ``steps`` steps."""
        x = noisy.to(self.device, torch.float32)
        timesteps = self.schedule(t, steps)
        for i, timestep in enumerate(timesteps):
            eps, x0 = self._eps_and_x0(x, timestep)
            following = timesteps[i + 1] if i + 1 < len(timesteps) else None
            x = self._move(x0, eps, self._alpha(following))
        return x

    @torch.inference_mode()
    def invert(self, latents: torch.Tensor, steps: int, t: float = 1.0) -> torch.Tensor:
        """DDIM inversion: clean latents -> the noisy latents at level ``t`` that denoise back to them."""
        x = latents.to(self.device, torch.float32)
        timesteps = self.schedule(t, steps)[::-1]
        previous = None
        for timestep in timesteps:
            alpha_prev = self._alpha(previous).to(x.device, torch.float32)
            stamp = torch.full((x.shape[0],), timestep, device=self.device, dtype=torch.long)
            out = self.unet(x.to(self.dtype), stamp).sample.float()
            eps = self._eps_from_output(out, x, timestep)
            x0 = (x - (1 - alpha_prev).sqrt() * eps) / alpha_prev.sqrt()
            x = self._move(x0, eps, self._alpha(timestep))
            previous = timestep
        return x

    def _eps_from_output(self, out: torch.Tensor, x: torch.Tensor, timestep: int) -> torch.Tensor:
        """Noise estimate from a raw UNet output, treating ``x`` as if it sat at ``timestep``."""
        if self.prediction_type == "epsilon":
            return out
        alpha = self._alpha(timestep).to(x.device, torch.float32)
        a, s = alpha.sqrt(), (1 - alpha).sqrt()
        if self.prediction_type == "v_prediction":
            return s * x + a * out
        return (x - a * out) / s

    @torch.inference_mode()
    def features(self, latents, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """N x C x h x w float32: the UNet's bottleneck activations (its mid block's output; the last down block's
        when it has none) for the clean latents at timestep 0, how the denoiser sees what an image shows. Grids
        are halved by average pooling until ``C x h x w <= MAX_FEATURE_VALUES``, so large models stay comparable
        by Euclidean distance over many images."""
        from tqdm.auto import tqdm

        block = self.unet.mid_block if getattr(self.unet, "mid_block", None) is not None else self.unet.down_blocks[-1]
        caught = []
        hook = block.register_forward_hook(lambda module, args, out: caught.append(out[0] if isinstance(out, tuple) else out))
        latents = np.asarray(latents, dtype=np.float32)
        parts = []
        try:
            for start in tqdm(range(0, len(latents), batch_size), desc="denoiser features", disable=not progress,
                              dynamic_ncols=True):
                x = torch.from_numpy(latents[start:start + batch_size]).to(self.device, self.dtype)
                caught.clear()
                self.unet(x, torch.zeros(len(x), dtype=torch.long, device=self.device))
                parts.append(_pool_to_budget(caught[-1].float()).cpu().numpy())
        finally:
            hook.remove()
        return np.concatenate(parts) if parts else np.zeros((0, 1, 1, 1), np.float32)

    def sample(self, noise: torch.Tensor, steps: int, t: float = 1.0) -> torch.Tensor:
        """Generate latents from noise at level ``t`` (1.0 = pure noise)."""
        return self.denoise(noise, t, steps)

    def reconstruct(self, latents: torch.Tensor, t: float, steps: int, generator: torch.Generator | None = None, noise=None) -> torch.Tensor:
        """Noise to level ``t`` and denoise back: the diffusion reconstruction used for anomaly scores."""
        return self.denoise(self.add_noise(latents, t, noise=noise, generator=generator), t, steps)


def _pool_to_budget(features: torch.Tensor) -> torch.Tensor:
    while features.shape[1] * features.shape[2] * features.shape[3] > MAX_FEATURE_VALUES and min(features.shape[2:]) > 1:
        features = torch.nn.functional.avg_pool2d(features, 2, ceil_mode=True)
    return features

"""A diffusion model over scaled latents: add noise to a level t, denoise back with DDIM, invert.

The model is a diffusers ``UNet2DModel`` (in ``unet/``) with the noise schedule of
its scheduler (``scheduler/``), as written by ``latentscope train`` or any
unconditional latent-diffusion pipeline, or the text-conditioned
``UNet2DConditionModel`` of a Stable Diffusion 1.x / 2.x pipeline folder, run with
the empty prompt's embedding (the unconditional branch of classifier-free
guidance, computed once from its ``text_encoder/`` and ``tokenizer/``, which need
``transformers``). Noise levels are given as a fraction
``t`` in [0, 1] of the training schedule; sampling and inversion are
deterministic DDIM (eta = 0) with the final step to alpha = 1, so that
``denoise(invert(z, t), t)`` returns ``z`` up to the discretisation error.

Shapes: latents are N x C x h x w float32 tensors in the codec's scaled space.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

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


def is_text_conditioned(unet) -> bool:
    return "encoder_hidden_states" in inspect.signature(unet.forward).parameters


def empty_prompt_embedding(location: ModelLocation, unet, dtype: torch.dtype) -> torch.Tensor:
    """1 x tokens x D: the empty prompt encoded by the pipeline's text encoder, as Stable Diffusion pipelines
    encode the unconditional prompt of classifier-free guidance."""
    config = unet.config
    extra = [f"{key}={config.get(key)!r}" for key in ("addition_embed_type", "class_embed_type", "encoder_hid_dim_type")
             if config.get(key) is not None]
    if extra:
        raise ModelError(f"{location.describe()}: the UNet needs conditioning besides a text embedding ({', '.join(extra)}; "
                         "e.g. Stable Diffusion XL or an upscaler), which latentscope does not provide; give an "
                         "unconditional or a Stable Diffusion 1.x / 2.x style model")
    folder = Path(location.source) if location.is_local else None
    if folder is not None and not all((folder / part).is_dir() for part in ("text_encoder", "tokenizer")):
        raise ModelError(f"{folder}: unet/ is text-conditioned ({type(unet).__name__}); its empty-prompt embedding "
                         "needs the pipeline's text_encoder/ and tokenizer/ beside it")
    try:
        import transformers
    except ImportError:
        raise ModelError(f"{location.describe()}: a text-conditioned UNet needs transformers for its text encoder; "
                         "pip install transformers") from None
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # its "Loading weights" bar would interleave with ours
    try:
        tokenizer = transformers.CLIPTokenizer.from_pretrained(location.source, subfolder="tokenizer")
        encoder = transformers.CLIPTextModel.from_pretrained(location.source, subfolder="text_encoder",
                                                             use_safetensors=True).float()  # once, on the CPU
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"{location.source}: could not load the text_encoder/ and tokenizer/ of its text-conditioned "
                         f"UNet ({first})") from None
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()
    ids = tokenizer("", padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    with torch.inference_mode():
        embedding = encoder.eval()(ids)[0]
    if embedding.shape[-1] != config.cross_attention_dim:
        raise ModelError(f"{location.source}: the text encoder gives {embedding.shape[-1]} values per token, the UNet "
                         f"attends to {config.cross_attention_dim}")
    return embedding.to(dtype)


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
    """A UNet + noise schedule, with DDIM denoising and inversion over scaled latents.

    ``condition``: for a text-conditioned UNet, the 1 x tokens x D embedding it attends to at every call (the
    empty prompt's, see :func:`empty_prompt_embedding`); None for an unconditional one.
    """

    def __init__(self, unet, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon", device="auto", dtype="auto",
                 reference=None, condition: torch.Tensor | None = None):
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        if next(unet.parameters()).dtype != self.dtype:
            unet = unet.to(dtype=self.dtype)
        self.unet = unet.to(self.device).eval().requires_grad_(False)
        if is_text_conditioned(self.unet) and condition is None:
            raise ModelError(f"{type(unet).__name__} is text-conditioned: give the embedding it attends to (condition)")
        self.condition = None if condition is None else condition.to(self.device, self.dtype)
        self.alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu()
        self.prediction_type = prediction_type
        self.reference = reference

    @classmethod
    def from_pretrained(cls, reference: str | os.PathLike, device="auto", dtype="auto") -> "Denoiser":
        location = locate_component(reference, "unet")
        if location.subfolder != "unet":
            raise ModelError(f"--model {reference}: no unet/ folder; a denoiser needs a model trained with "
                             "'latentscope train' or a diffusion pipeline folder (unet/, scheduler/)")
        device = resolve_device(device)
        unet = load_model(location, "unet", resolve_dtype(dtype, device))
        alphas, prediction = load_alphas_cumprod(location)
        condition = empty_prompt_embedding(location, unet, resolve_dtype(dtype, device)) if is_text_conditioned(unet) else None
        return cls(unet, alphas, prediction, device, dtype, reference=str(reference), condition=condition)

    @property
    def in_channels(self) -> int:
        return int(self.unet.config.in_channels)

    def check_latents(self, channels: int, what: str = "the autoencoder") -> None:
        """Refuse latents the UNet was not made for (an inpainting UNet takes 9 channels, for instance)."""
        if self.in_channels != channels:
            raise ModelError(f"{self.reference or 'denoiser'}: its UNet takes {self.in_channels} latent channels, "
                             f"{what} gives {channels}; give a denoiser trained on this autoencoder's latents")

    def _predict(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The UNet's raw output for ``x`` at ``timesteps`` (with the condition, when it takes one)."""
        if self.condition is None:
            return self.unet(x.to(self.dtype), timesteps).sample
        condition = self.condition.expand(len(x), *self.condition.shape[1:])
        return self.unet(x.to(self.dtype), timesteps, encoder_hidden_states=condition).sample

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
        out = self._predict(x, stamp).float()
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
            out = self._predict(x, stamp).float()
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
                self._predict(x, torch.zeros(len(x), dtype=torch.long, device=self.device))
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

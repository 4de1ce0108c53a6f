"""The autoencoder: any diffusers autoencoder, with latent scaling handled here and nowhere else.

A model reference may be

* a folder holding an autoencoder (``config.json`` + safetensors weights),
* a pipeline folder (``model_index.json``) or a latentscope model folder whose
  autoencoder lives in ``vae/``,
* a Hugging Face Hub id (``owner/name``), loaded the same way,
* ``builtin:<name>`` for a model shipped inside the package (``builtin:digits``).

Latents handed out by :class:`Codec` are always *scaled*:
``z = (mean - shift_factor) * scaling_factor``, the space the diffusion model
works in; :meth:`Codec.decode` undoes the scaling.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .errors import InputError, ModelError
from .runtime import resolve_device, resolve_dtype

log = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
BUILTIN_ROOT = Path(__file__).parent / "models"
WEIGHT_SUFFIXES = (".safetensors",)
REFINE_LEARNING_RATE = 0.03  # Adam step on scaled latents, whose spread is about 1


@dataclass(frozen=True)
class ModelLocation:
    """Where a model component lives: a local folder or hub id, plus an optional subfolder."""

    reference: str  # as the user gave it
    source: str  # local absolute folder, or hub id
    subfolder: str | None
    is_local: bool

    def describe(self) -> str:
        return self.source + (f" ({self.subfolder}/)" if self.subfolder else "")


def builtin_models() -> list[str]:
    if not BUILTIN_ROOT.is_dir():
        return []
    return sorted(p.name for p in BUILTIN_ROOT.iterdir() if (p / "vae" / "config.json").is_file())


def locate_component(reference: str | os.PathLike, component: str = "vae") -> ModelLocation:
    """Resolve a model reference to the folder (or hub repo + subfolder) holding ``component``."""
    ref = str(reference)
    if ref.startswith(BUILTIN_PREFIX):
        name = ref[len(BUILTIN_PREFIX):]
        folder = BUILTIN_ROOT / name
        plain = name.replace("-", "").replace("_", "").isalnum()  # a built-in name is a word, never a path
        if not plain or not folder.is_dir():
            known = ", ".join(BUILTIN_PREFIX + n for n in builtin_models()) or "none installed"
            raise ModelError(f"--model {ref}: no built-in model of that name (known: {known})")
        return _locate_local(ref, folder, component)
    path = Path(ref).expanduser()
    if path.exists():
        return _locate_local(ref, path, component)
    if _looks_like_hub_id(ref):
        return _locate_hub(ref, component)
    raise ModelError(f"--model {ref}: no such folder, and not a Hugging Face Hub id (owner/name)")


def _looks_like_hub_id(ref: str) -> bool:
    parts = ref.split("/")
    return len(parts) == 2 and all(parts) and not ref.startswith((".", "/", "~"))


def _locate_local(ref: str, folder: Path, component: str) -> ModelLocation:
    folder = folder.resolve()
    if not folder.is_dir():
        raise ModelError(f"--model {ref}: {folder} is a file; give the model folder")
    if (folder / component / "config.json").is_file():
        return ModelLocation(ref, str(folder), component, True)
    if (folder / "config.json").is_file():
        return ModelLocation(ref, str(folder), None, True)
    raise ModelError(
        f"--model {ref}: {folder} has neither config.json nor {component}/config.json; "
        "give a diffusers model folder, a pipeline folder, or a latentscope model folder"
    )


def _locate_hub(ref: str, component: str) -> ModelLocation:
    for subfolder in (component, None):
        try:
            _hub_config(ref, subfolder)
            return ModelLocation(ref, ref, subfolder, False)
        except Exception as exc:  # network, missing file, gated repo ...
            last = exc
    raise ModelError(
        f"--model {ref}: could not load it from the Hugging Face Hub ({type(last).__name__}: "
        f"{str(last).splitlines()[0] if str(last) else 'no detail'}); give a local model folder instead"
    )


def _hub_config(repo_id: str, subfolder: str | None) -> dict:
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(repo_id, "config.json", subfolder=subfolder)
    return json.loads(Path(path).read_text())


def read_config(location: ModelLocation) -> dict:
    if location.is_local:
        path = Path(location.source, location.subfolder or "", "config.json")
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelError(f"{path}: unreadable model config ({exc})") from None
    return _hub_config(location.source, location.subfolder)


def model_class(config: dict, location: ModelLocation, kind: str = "autoencoder"):
    """The diffusers class named by ``_class_name``, checked to be a model of the expected kind."""
    import diffusers

    name = config.get("_class_name")
    cls = getattr(diffusers, name, None) if isinstance(name, str) else None
    if cls is None or not isinstance(cls, type) or not issubclass(cls, diffusers.ModelMixin):
        raise ModelError(f"{location.describe()}: config names class {name!r}, which is not a diffusers model")
    if kind == "autoencoder" and not (hasattr(cls, "encode") and hasattr(cls, "decode")):
        raise ModelError(f"{location.describe()}: {name} is not an autoencoder (it has no encode/decode)")
    return cls


def load_model(location: ModelLocation, kind: str = "autoencoder", dtype: torch.dtype = torch.float32):
    """Load a diffusers model from safetensors only, never with remote code."""
    config = read_config(location)
    cls = model_class(config, location, kind)
    if location.is_local:
        folder = Path(location.source, location.subfolder or "")
        if not any(p.suffix in WEIGHT_SUFFIXES for p in folder.iterdir()):
            raise ModelError(f"{folder}: no .safetensors weights (pickled .bin weights are not loaded, for safety)")
    try:
        model = cls.from_pretrained(
            location.source, subfolder=location.subfolder, use_safetensors=True, low_cpu_mem_usage=False, torch_dtype=dtype
        )
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"{location.describe()}: could not load {cls.__name__} ({first})") from None
    return model.eval().requires_grad_(False)


def fingerprint(location: ModelLocation, config: dict) -> str:
    """A short id that changes when the config or the weights change (scopes record it)."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    if location.is_local:
        folder = Path(location.source, location.subfolder or "")
        for weights in sorted(folder.glob("*.safetensors")):
            size = weights.stat().st_size
            digest.update(f"{weights.name}:{size}".encode())
            with open(weights, "rb") as handle:
                digest.update(handle.read(1 << 20))
                if size > 2 << 20:
                    handle.seek(-(1 << 20), os.SEEK_END)
                    digest.update(handle.read())
    return digest.hexdigest()[:16]


def check_scope_model(reference: str | os.PathLike, scope) -> None:
    """Refuse a ``--model`` other than the one ``scope`` was encoded with (checked without loading its weights).

    The fingerprint covers the config and the weights, not the path, so the same
    model moved to another folder passes.
    """
    recorded = scope.model.get("fingerprint")
    if not recorded:
        return
    location = locate_component(reference, "vae")
    if fingerprint(location, read_config(location)) != recorded:
        raise other_model_error(reference, scope)


def other_model_error(reference, scope):
    from .errors import ScopeError

    return ScopeError(f"--model {reference}: another model than the one {scope.path} was encoded with "
                      f"({scope.model.get('reference')}); its latents only decode with that model")


class Codec:
    """A diffusers autoencoder with scaling, device and batching handled in one place.

    Parameters
    ----------
    vae : diffusers autoencoder (``AutoencoderKL``, ``AutoencoderTiny``, ...)
    device, dtype : where and how to run it (``"auto"`` picks GPU when present).
    reference : how the model was named, recorded in scopes.
    """

    def __init__(self, vae, device="auto", dtype="auto", reference: str | None = None, fingerprint: str = ""):
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        if next(vae.parameters()).dtype != self.dtype:
            vae = vae.to(dtype=self.dtype)
        self.vae = vae.to(self.device).eval().requires_grad_(False)
        self.reference = reference
        self.fingerprint = fingerprint
        self._downscale: int | None = None

    @classmethod
    def from_pretrained(cls, reference: str | os.PathLike, device="auto", dtype="auto") -> "Codec":
        location = locate_component(reference, "vae")
        config = read_config(location)
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        vae = load_model(location, "autoencoder", dtype)
        return cls(vae, device, dtype, reference=str(reference), fingerprint=fingerprint(location, config))

    # ------------------------------------------------------------------ config

    @property
    def config(self):
        return self.vae.config

    @property
    def class_name(self) -> str:
        return type(self.vae).__name__

    @property
    def scaling_factor(self) -> float:
        return float(getattr(self.config, "scaling_factor", None) or 1.0)

    @property
    def shift_factor(self) -> float:
        return float(getattr(self.config, "shift_factor", None) or 0.0)

    @property
    def latent_channels(self) -> int:
        return int(self.config.latent_channels)

    @property
    def image_size(self) -> tuple[int, int] | None:
        """The model's native image size from ``sample_size`` (height, width), if it has one."""
        size = getattr(self.config, "sample_size", None)
        if size is None:
            return None
        if isinstance(size, (list, tuple)):
            return int(size[0]), int(size[-1])
        return int(size), int(size)

    @property
    def downscale(self) -> int:
        """Spatial reduction factor from image to latent, measured once with a dry run."""
        if self._downscale is None:
            probe = torch.zeros(1, 3, 64, 64, device=self.device, dtype=self.dtype)
            with torch.inference_mode():
                latent = self._raw_encode(probe, sample=False, generator=None)
            self._downscale = max(1, 64 // int(latent.shape[-1]))
        return self._downscale

    def latent_shape(self, image_size: tuple[int, int]) -> tuple[int, int, int]:
        h, w = image_size
        f = self.downscale
        if h % f or w % f:
            raise ModelError(f"image size {h}x{w} is not a multiple of the model's downscale factor {f}")
        return self.latent_channels, h // f, w // f

    def describe(self, image_size: tuple[int, int]) -> dict:
        """What a scope records about the model."""
        return {
            "reference": self.reference,
            "class": self.class_name,
            "fingerprint": self.fingerprint,
            "scaling_factor": self.scaling_factor,
            "shift_factor": self.shift_factor,
            "image_size": list(image_size),
            "latent_shape": list(self.latent_shape(image_size)),
        }

    # ------------------------------------------------------------------ encode / decode

    def enable_tiling(self, enabled: bool = True) -> None:
        """Encode/decode large images tile by tile (memory stays bounded)."""
        if hasattr(self.vae, "enable_tiling"):
            self.vae.enable_tiling() if enabled else self.vae.disable_tiling()

    def _raw_encode(self, images: torch.Tensor, sample: bool, generator) -> torch.Tensor:
        out = self.vae.encode(images)
        if hasattr(out, "latent_dist"):
            dist = out.latent_dist
            return dist.sample(generator=generator) if sample else dist.mode()
        if hasattr(out, "latents"):
            return out.latents
        return out[0]

    @torch.inference_mode()
    def encode(self, images: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images N x 3 x H x W in [-1, 1] -> scaled latents N x C x h x w (float32, on the device)."""
        images = images.to(self.device, self.dtype, non_blocking=True)
        latent = self._raw_encode(images, sample, generator).float()
        return (latent - self.shift_factor) * self.scaling_factor

    def _decoded(self, latents: torch.Tensor) -> torch.Tensor:
        latents = latents.to(self.device, torch.float32) / self.scaling_factor + self.shift_factor
        out = self.vae.decode(latents.to(self.dtype))
        images = out.sample if hasattr(out, "sample") else out[0]
        return images.float().clamp(-1.0, 1.0)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents N x C x h x w -> images N x 3 x H x W in [-1, 1] (float32)."""
        return self._decoded(latents)

    def refine(self, images: torch.Tensor, latents: torch.Tensor, steps: int,
               learning_rate: float = REFINE_LEARNING_RATE) -> torch.Tensor:
        """Scaled latents moved by ``steps`` Adam steps down each image's squared reconstruction error.

        The encoder only approximates the latent its decoder renders closest to an image (the amortisation gap);
        optimising the latent itself closes much of that gap at the cost of ``steps`` decoder forward and backward
        passes per image. Each image keeps the best latent seen, so a refined latent never decodes further from its
        image than the encoder's. Images are independent: a batch gives the latents each would get alone (up to
        floating-point rounding).
        """
        if steps < 0:
            raise InputError(f"refine steps {steps}: must be 0 or more")
        with torch.inference_mode(False), torch.enable_grad():  # callers may run in inference mode
            best = latents.detach().to(self.device, torch.float32).clone()
            if steps == 0:
                return best
            target = images.detach().to(self.device, torch.float32).clone()
            latent = best.clone().requires_grad_(True)
            best_error = torch.full((len(best),), float("inf"), device=self.device)
            optimiser = torch.optim.Adam([latent], lr=learning_rate)
            for step in range(steps + 1):
                error = (self._decoded(latent) - target).pow(2).flatten(1).mean(1)
                better = error.detach() < best_error
                best = torch.where(better[:, None, None, None], latent.detach(), best)
                best_error = torch.where(better, error.detach(), best_error)
                if step == steps:
                    break
                optimiser.zero_grad(set_to_none=True)
                error.sum().backward()
                optimiser.step()
        return best

    def decode_batches(self, latents: np.ndarray | torch.Tensor, batch_size: int = 64) -> Iterator[np.ndarray]:
        """Decode in batches, yielding uint8 N x H x W x 3 arrays."""
        from .images import tensor_range_to_pixels

        for start in range(0, len(latents), batch_size):
            chunk = torch.as_tensor(np.asarray(latents[start : start + batch_size], dtype=np.float32))
            yield tensor_range_to_pixels(self.decode(chunk).cpu().numpy())

    def decode_to_pixels(self, latents, batch_size: int = 64) -> np.ndarray:
        """Decode all latents to uint8 N x H x W x 3."""
        parts = list(self.decode_batches(latents, batch_size))
        return np.concatenate(parts) if parts else np.zeros((0, 0, 0, 3), np.uint8)

    def encode_pixels(self, pixels: np.ndarray, batch_size: int = 64, refine: int = 0) -> np.ndarray:
        """Encode uint8 N x H x W x 3 images (already at the model's size) to float32 latents, each refined by
        ``refine`` optimisation steps (:meth:`refine`)."""
        from .images import pixels_to_tensor_range

        parts = []
        for start in range(0, len(pixels), batch_size):
            batch = torch.from_numpy(pixels_to_tensor_range(pixels[start : start + batch_size]))
            latents = self.encode(batch)
            if refine:
                latents = self.refine(batch, latents, refine)
            parts.append(latents.cpu().numpy())
        return np.concatenate(parts)

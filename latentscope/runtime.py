"""The one place that decides device, dtype and seeds."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

from .errors import InputError

log = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
DTYPE_CHOICES = ("auto", "float32", "float16", "bfloat16")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N|mps`` into a usable ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    name = str(device).lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {device}: no CUDA GPU is available here; use --device cpu or auto")
        return torch.device(name)
    if name == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise InputError("--device mps: Apple MPS is not available here; use --device cpu or auto")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise InputError(f"--device {device}: unknown device; choose one of {', '.join(DEVICE_CHOICES)}")


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | None = None) -> torch.dtype:
    """Float32 on CPU; bfloat16 on GPUs that support it (half-precision VAEs overflow in float16)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).lower()
    if name == "auto":
        if device is not None and device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in table:
        raise InputError(f"--dtype {dtype}: unknown dtype; choose one of {', '.join(DTYPE_CHOICES)}")
    return table[name]


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator for explicit draws."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator | None:
    """A torch generator on ``device`` seeded with ``seed``, or None when no seed is given."""
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(int(seed))


def cache_dir() -> str:
    """latentscope's per-user cache folder (``$LATENTSCOPE_CACHE`` or ``$XDG_CACHE_HOME/latentscope``)."""
    root = os.environ.get("LATENTSCOPE_CACHE")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "latentscope")
    os.makedirs(root, exist_ok=True)
    return root

"""Sidecar JSON written beside every export, and :func:`replay`, which rebuilds the frames from it."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import InputError
from ..fileio import read_json

log = logging.getLogger(__name__)

SIDECAR_FORMAT = 1


def frame_digests(pixels: np.ndarray) -> list[str]:
    """Short sha256 of every frame's pixels (decoding is deterministic on one machine; other hardware may differ slightly)."""
    return [hashlib.sha256(np.ascontiguousarray(frame).tobytes()).hexdigest()[:16] for frame in pixels]


def sidecar_payload(walk, export: dict, metrics: dict | None) -> dict:
    from ..scope import now_iso

    walker_info = walk.info.get("walker", {})
    return {
        "latentscope_walk": SIDECAR_FORMAT,
        "version": __version__,
        "created": now_iso(),
        "scope": walker_info.get("scope"),
        "model": walker_info.get("model"),
        "denoiser": walker_info.get("denoiser"),
        "walk": walk.spec.to_dict(),
        "frames": len(walk),
        "frame_size": list(walk.pixels.shape[1:3]),
        "frame_sha256": frame_digests(walk.pixels),
        "knot_frames": walk.knot_frames,
        "waypoints": walk.waypoints,
        "export": export,
        "metrics": metrics,
        "info": {k: v for k, v in walk.info.items() if k != "walker"},
    }


def read_sidecar(path: str | Path) -> dict:
    path = Path(path).expanduser()
    try:
        payload = read_json(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable walk sidecar ({exc})") from None
    if not isinstance(payload, dict) or payload.get("latentscope_walk") != SIDECAR_FORMAT or "walk" not in payload:
        raise InputError(f"{path}: not a latentscope walk sidecar (format {SIDECAR_FORMAT})")
    return payload


def replay(sidecar: str | Path, scope=None, model=None, denoiser=None, projection=None, device="auto", dtype="auto"):
    """Rebuild a walk from an export's sidecar JSON; returns the :class:`~latentscope.walks.Walk`.

    ``scope``, ``model`` and ``denoiser`` default to what the sidecar recorded;
    pass them to replay elsewhere (a moved scope, a copied model). The frames
    match the recorded ones when the model and scope are unchanged; a warning
    names any frame whose digest differs.
    """
    from .core import Walker, WalkSpec

    payload = read_sidecar(sidecar)
    scope = scope if scope is not None else payload.get("scope")
    if scope is not None and not isinstance(scope, (str, Path)) and not hasattr(scope, "latents"):
        raise InputError(f"{sidecar}: scope {scope!r} is not a scope")
    model = model if model is not None else (payload.get("model") or {}).get("reference")
    denoiser = denoiser if denoiser is not None else (payload.get("denoiser") or {}).get("reference")
    walker = Walker(scope, model=model, denoiser=denoiser, projection=projection, device=device, dtype=dtype)
    recorded_fingerprint = (payload.get("model") or {}).get("fingerprint")
    if recorded_fingerprint and walker.codec.fingerprint and walker.codec.fingerprint != recorded_fingerprint:
        log.warning("%s: model %s is not the one recorded (fingerprint differs); frames will differ", sidecar, walker.codec.reference)
    result = walker.run(WalkSpec.from_dict(payload["walk"]))
    recorded = payload.get("frame_sha256") or []
    changed = [i for i, (a, b) in enumerate(zip(frame_digests(result.pixels), recorded)) if a != b]
    if changed or (recorded and len(recorded) != len(result)):
        log.warning("%s: %d of %d frames differ from the recorded ones (other hardware or changed inputs)", sidecar, len(changed), len(result))
    return result

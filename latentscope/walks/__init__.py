"""Walks through latent space: interpolate between points, decode the frames, export them.

>>> from latentscope import walks
>>> w = walks.walk("digits.scope", 12, 40, method="slerp", steps=24, even=True)
>>> w.save("morph.gif", fps=12, size=256)          # writes morph.gif and morph.gif.json
>>> w.metrics().summary["evenness"]
>>> again = walks.replay("morph.gif.json")          # the same frames

Modules: :mod:`.interpolants` (lerp, slerp, polylines), :mod:`.graph` (kNN
graph routes), :mod:`.spacing` (frame placement), :mod:`.core` (specs, the
walker, decoding, polish), :mod:`.ends` (ids, files, map points),
:mod:`.metrics` (smoothness), :mod:`.export` (GIF, MP4, PNG) and
:mod:`.replay` (sidecars).
"""

from .core import METHODS, Walk, Walker, WalkSpec, walk
from .ends import latents_from_map
from .export import export_frames
from .interpolants import lerp, slerp
from .metrics import WalkMetrics, walk_metrics
from .replay import read_sidecar, replay

__all__ = [
    "METHODS", "Walk", "Walker", "WalkSpec", "walk", "latents_from_map", "export_frames", "lerp", "slerp",
    "WalkMetrics", "walk_metrics", "read_sidecar", "replay",
]

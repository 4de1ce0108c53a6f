"""Heatmap overlays of stored scores: one image's PNG for the dashboard, or a folder of PNG files.

    render = Heatmaps(scope, "default")      # opens the stored maps once (memory map)
    png = render(image_id)                   # PNG bytes of the overlay, a few milliseconds

When the scores were written without maps (``--no-maps``), the diffusion score's
map of one image is recomputed on demand from the stored calibration (this needs
the model; it is loaded once, on first use).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..errors import ImageError, InputError, ModelError, ScopeError
from ..fileio import load_npy, write_bytes
from ..scope import Scope
from .maps import overlay, png_bytes
from .stage import CALIBRATION_SUFFIX, MAPS_SUFFIX, ScopeImages, resolve_models

log = logging.getLogger(__name__)

DISPLAY_SIDE = 256  # overlays are drawn at least this many pixels on the longer side


class Heatmaps:
    """Renders heatmap overlays of the stored score ``name``: ``Heatmaps(scope, name)(image_id) -> PNG bytes``."""

    def __init__(self, scope: str | os.PathLike | Scope, name: str = "default", model: str | None = None,
                 device: str = "cpu", display_side: int = DISPLAY_SIDE, opacity: float = 0.65):
        self.scope = scope if isinstance(scope, Scope) else Scope(scope)
        self.name = name
        self.model = model
        self.device = device
        self.display_side = display_side
        self.opacity = opacity
        entry = self.scope.meta.get("scores", {}).get(name)
        if entry is None:
            known = ", ".join(self.scope.meta.get("scores", {})) or "none yet"
            raise ScopeError(f"{self.scope.path}: no score named {name!r} (have: {known}); run 'latentscope score'")
        self.params = entry.get("params", {})
        self.files = entry.get("files", {})
        # scope.json may come from someone else: its file names must stay inside the scope folder
        self.paths = {key: self.scope.inside("scores", value, what=f"score {name!r} {key} file")
                      for key, value in self.files.items() if value}
        ids = self.scope.read_scores(name)["id"].to_numpy(np.int64)
        self.row_of = {int(i): r for r, i in enumerate(ids)}
        self.images = ScopeImages(self.scope)
        self.display = self.params.get("display") or [0.0, 1.0]
        self._maps = None
        self._scorer = None

    @property
    def stored(self) -> np.ndarray | None:
        if self._maps is None and self.files.get("maps"):
            path = self.paths["maps"]
            if path.exists():
                self._maps = load_npy(path, mmap=True)
                if len(self._maps) != len(self.row_of):
                    raise ScopeError(f"{path}: {len(self._maps)} maps for {len(self.row_of)} scores; run 'latentscope score' again")
        return self._maps

    def error_map(self, image_id: int) -> np.ndarray:
        """The heatmap values (float32 h x w) of one image."""
        image_id = int(image_id)
        if image_id not in self.row_of:
            raise ScopeError(f"{self.scope.path}: image {image_id} has no score in scores/{self.name}.parquet")
        if self.stored is not None:
            return np.asarray(self.stored[self.row_of[image_id]], dtype=np.float32)
        return self._recompute(image_id)

    def _recompute(self, image_id: int) -> np.ndarray:
        if self.params.get("method") != "diffusion" or not self.files.get("calibration"):
            raise ScopeError(f"{self.scope.path}: score {self.name!r} has no stored maps and cannot recompute them "
                             "(only the diffusion score can); run 'latentscope score' without --no-maps")
        if self._scorer is None:
            from .diffusion import DiffusionScore

            codec, denoiser = resolve_models(self.scope, self.model or self.params.get("model"), True, self.device)
            keys = ("levels", "steps", "draws", "seed", "smoothing", "floor", "top_k", "terms", "k", "neighbours")
            options = {"neighbours": 0, **{k: self.params[k] for k in keys if k in self.params}}  # 0: scores from before it
            self._scorer = DiffusionScore(codec, denoiser, **options)
            with np.load(self.paths["calibration"], allow_pickle=False) as stored:
                try:
                    self._scorer.load_calibration({k: stored[k] for k in stored.files})
                except InputError as exc:  # stored by an older version
                    self._scorer = None
                    raise ScopeError(f"{self.paths['calibration']}: {exc}") from None
        batch = self.images.batch([image_id])
        return self._scorer.heatmaps(self._scorer.measure(batch), batch.latents, batch.ids)[0]

    def overlay(self, image_id: int) -> np.ndarray:
        """RGB uint8 overlay of the image's heatmap on the image, at least ``display_side`` pixels on its long side."""
        from PIL import Image

        pixels = self.images.pixels(int(image_id))
        scale = max(1, int(np.ceil(self.display_side / max(pixels.shape[:2]))))
        if scale > 1:
            pixels = np.asarray(Image.fromarray(pixels).resize((pixels.shape[1] * scale, pixels.shape[0] * scale),
                                                               Image.Resampling.BICUBIC))
        return overlay(pixels, self.error_map(image_id), self.display[0], self.display[1], self.opacity)

    def __call__(self, image_id: int) -> bytes:
        return png_bytes(self.overlay(image_id))


    def can_render(self) -> bool:
        """Whether overlays can be drawn: stored maps, or a diffusion score whose maps can be recomputed."""
        if self.files.get("maps") and self.paths["maps"].exists():
            return True
        return self.params.get("method") == "diffusion" and bool(self.files.get("calibration"))

    def png_or_none(self, image_id: int) -> bytes | None:
        """PNG bytes, or None (logged) when this image has no heatmap: unscored, or its file is unreadable now."""
        try:
            return self(image_id)
        except (ScopeError, ImageError, ModelError) as exc:
            log.info("no heatmap for image %s: %s", image_id, exc)
            return None


def heatmap_png(scope, name: str, image_id: int, **options) -> bytes:
    """PNG bytes of the heatmap overlay of image ``image_id`` for the stored score ``name`` of ``scope``.

    Opens the scope on each call; keep a :class:`Heatmaps` (``Heatmaps(scope, name)(image_id)``) to draw many.
    """
    return Heatmaps(scope, name, **options)(image_id)


def heatmap_renderer(scope, name: str | None = None, **options):
    """``image id -> PNG bytes or None`` for the score ``name`` (default: ``default``, else the first stored
    score), or None when the scope has no score whose heatmaps can be drawn (a baseline without maps)."""
    scope = scope if isinstance(scope, Scope) else Scope(scope)
    stored = list(scope.meta.get("scores", {}))
    if name is None:
        name = "default" if "default" in stored else (stored[0] if stored else None)
    if name is None or name not in stored:
        return None
    try:
        render = Heatmaps(scope, name, **options)
    except (ScopeError, ImageError) as exc:
        log.warning("%s: heatmaps of score %r unavailable: %s", scope.path, name, exc)
        return None
    return render.png_or_none if render.can_render() else None


def export_top(scope, folder: str | os.PathLike, top, name: str = "default", **options) -> Path:
    """Heatmap overlays of the ``top`` images (a :func:`top_scores` frame) and ``top.csv`` beside them: rank,
    id, file, score (and terms) with the overlay's file name, so the flagged files can be acted on."""
    written = export_heatmaps(scope, folder, name=name, ids=top["id"].tolist(), **options)
    table = top.rename(columns={"path": "file"}).assign(heatmap=[p.name for p in written])
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    target = Path(folder) / "top.csv"
    write_bytes(target, table.to_csv(index=False).encode("utf-8"))
    return target


def export_heatmaps(scope, folder: str | os.PathLike, name: str = "default", ids=None, **options) -> list[Path]:
    """Write overlays as ``<folder>/<id>.png`` for ``ids`` (default: every scored image)."""
    render = Heatmaps(scope, name, **options)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for image_id in (ids if ids is not None else list(render.row_of)):
        path = folder / f"{int(image_id)}.png"
        write_bytes(path, render(int(image_id)))
        written.append(path)
    return written

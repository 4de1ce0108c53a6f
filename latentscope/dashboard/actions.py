"""Long work the page asks for: decoding walks and mosaics. Run as jobs; results serve their own files.

Each result keeps its frames in memory only while its job is kept (see
:mod:`.jobs`), and renders files (PNG frames, strip, GIF, MP4) on request.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import numpy as np

from ..errors import InputError
from .data import ExplorerData, png_bytes

DOWNLOAD_SIDE = 256
MOSAIC_GAP = 1


class WalkResult:
    """A decoded walk as the page shows it: frames, their path across the map, and files for download."""

    def __init__(self, walk, path_xy: np.ndarray, description: str):
        self.walk = walk
        self.pixels = walk.pixels
        self.path_xy = np.asarray(path_xy, np.float32)
        self.description = description
        self._files: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def summary(self, job_id: str) -> dict:
        return {"job": job_id, "frames": len(self.pixels), "path": self.path_xy.tolist(), "text": self.description}

    def download_name(self, name: str) -> str:
        return {"download.gif": "walk.gif", "download.mp4": "walk.mp4", "download-strip.png": "walk-strip.png"}[name]

    def file(self, name: str) -> tuple[bytes, str] | None:
        if name.startswith("frame-") and name.endswith(".png"):
            index = name[6:-4]
            if not index.isdigit() or int(index) >= len(self.pixels):
                return None
            return png_bytes(self.pixels[int(index)]), "image/png"
        makers = {
            "download.gif": (lambda: self._export("gif", DOWNLOAD_SIDE), "image/gif"),
            "download.mp4": (lambda: self._export("mp4", DOWNLOAD_SIDE), "video/mp4"),
            "download-strip.png": (lambda: self._export("png", DOWNLOAD_SIDE // 2, layout="strip"), "image/png"),
        }
        if name not in makers:
            return None
        make, mimetype = makers[name]
        with self._lock:
            if name not in self._files:
                self._files[name] = make()
        return self._files[name], mimetype

    def _export(self, kind: str, side: int, **options) -> bytes:
        from ..walks.export import export_frames

        with tempfile.TemporaryDirectory() as folder:
            target = Path(folder) / f"walk.{kind}"
            size = side if max(self.pixels.shape[1:3]) < side else None
            export_frames(self.pixels, target, fps=12.0, size=size, **options)
            return target.read_bytes()


class MosaicResult:
    """Images decoded on a grid over a region of the map."""

    def __init__(self, pixels: np.ndarray, grid: int, bounds: tuple[float, float, float, float]):
        self.pixels = pixels
        self.grid = grid
        self.bounds = bounds

    def summary(self, job_id: str) -> dict:
        return {"job": job_id, "grid": self.grid, "bounds": list(self.bounds)}

    def download_name(self, name: str) -> str:
        return "mosaic.png"

    def file(self, name: str) -> tuple[bytes, str] | None:
        if name not in ("mosaic.png", "download-mosaic.png"):
            return None
        return png_bytes(mosaic_image(self.pixels, self.grid)), "image/png"


def mosaic_image(pixels: np.ndarray, grid: int) -> np.ndarray:
    """Tiles in grid order (row 0 = top of the map view) with a thin gap."""
    _, h, w, _ = pixels.shape
    sheet = np.full((grid * h + (grid - 1) * MOSAIC_GAP, grid * w + (grid - 1) * MOSAIC_GAP, 3), 255, np.uint8)
    for index, tile in enumerate(pixels):
        row, col = divmod(index, grid)
        sheet[row * (h + MOSAIC_GAP): row * (h + MOSAIC_GAP) + h, col * (w + MOSAIC_GAP): col * (w + MOSAIC_GAP) + w] = tile
    return sheet


def walk_spec(ids: list[int], method: str, steps: int, options: list[str], direction: dict | None = None):
    from ..walks import WalkSpec

    if direction is None and len(ids) < 2:
        raise InputError("click at least two points on the map first")
    return WalkSpec(ends=[int(i) for i in ids], method=method, steps=int(steps), loop="loop" in (options or []),
                    even="even" in (options or []), direction=direction)


def run_walk(job, data: ExplorerData, spec) -> WalkResult:
    """Decode a walk and place its frames on the map."""
    job.progress(0, 3, "preparing")
    walker = data.walker()
    job.progress(1, 3, f"decoding {spec.steps} frames ({spec.method})")
    walk = walker.run(spec)
    job.progress(2, 3, "placing frames on the map")
    path = data.map_positions(walk.latents)
    seconds = walk.info.get("seconds", {}).get("total", 0.0)
    text = f"{len(walk)} frames · {spec.method}{' · even spacing' if spec.even else ''} · {seconds:.2f} s"
    return WalkResult(walk, path, text)


def run_mosaic(job, data: ExplorerData, bounds: tuple[float, float, float, float], grid: int) -> MosaicResult:
    """Decode a grid x grid mosaic of what the map would show at evenly spaced points of ``bounds``."""
    x0, x1, y0, y1 = bounds
    xs = np.linspace(x0, x1, grid + 2)[1:-1]
    ys = np.linspace(y1, y0, grid + 2)[1:-1]  # top row first
    points = np.array([(x, y) for y in ys for x in xs], np.float32)
    job.progress(0, 2, "finding latents under the grid")
    latents = data.latents_at(points)
    job.progress(1, 2, f"decoding {len(points)} images")
    pixels = data.codec.decode_to_pixels(latents)
    return MosaicResult(pixels, grid, bounds)

"""Write walk frames as GIF, MP4, a PNG strip or a PNG contact sheet, each with a sidecar JSON.

The sidecar (``<output>.json``) records the walk parameters (ends, method,
steps, seed, model, scope) and the export settings, so :func:`latentscope.walks.replay`
can rebuild the same frames. Every file is written atomically.

GIF notes: frame delays are stored in hundredths of a second, so the effective
frame rate is ``100 / round(100 / fps)`` (recorded in the sidecar), capped at
50 fps because browsers slow down faster GIFs; identical consecutive frames are
merged by the encoder (their delays add up, playback time is unchanged).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError
from ..fileio import atomic_path, write_json

log = logging.getLogger(__name__)

FORMATS = {".gif": "gif", ".mp4": "mp4", ".png": "png"}
LAYOUTS = ("sheet", "strip")
RESAMPLING = {"nearest": Image.Resampling.NEAREST, "bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR, "lanczos": Image.Resampling.LANCZOS}
GIF_MAX_FPS = 50.0
SIDECAR_SUFFIX = ".json"
MAX_FPS = 240.0
MAX_EXPORT_BYTES = 2 << 30  # all exported frames at their output size, as 8-bit RGB


def export_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise InputError(f"--out {path}: unknown output type {suffix or '(none)'}; use .gif, .mp4 or .png")
    return FORMATS[suffix]


def check_output(path: str | Path) -> str:
    """The export format of ``path``, after checking that it can be written: a known suffix, an existing folder."""
    kind = export_format(path)
    path = Path(path).expanduser()
    if path.is_dir():
        raise InputError(f"--out {path}: is a folder; give a file name ending in .gif, .mp4 or .png")
    if not path.parent.is_dir():
        raise InputError(f"--out {path}: folder {path.parent} does not exist")
    return kind


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def output_size(frame_hw: tuple[int, int], size) -> tuple[int, int]:
    """(height, width) of exported frames: ``None`` keeps the size, an int sets the longer side, a pair is exact."""
    h, w = frame_hw
    if size is None:
        return h, w
    if isinstance(size, (int, np.integer)):
        if not 8 <= int(size) <= 16384:
            raise InputError(f"--size {size}: must be between 8 and 16384 pixels")
        scale = int(size) / max(h, w)
        return max(1, round(h * scale)), max(1, round(w * scale))
    pair = tuple(int(v) for v in size)
    if len(pair) != 2 or min(pair) < 8 or max(pair) > 16384:
        raise InputError(f"--size {size}: give one number or (height, width), 8 to 16384 pixels")
    return pair  # type: ignore[return-value]


def resize_frames(pixels: np.ndarray, size, resample: str = "nearest") -> np.ndarray:
    """Resize uint8 F x H x W x 3 frames (``nearest`` keeps small frames crisp, ``bicubic`` smooths them)."""
    if resample not in RESAMPLING:
        raise InputError(f"--resample {resample}: choose one of {', '.join(RESAMPLING)}")
    h, w = output_size(pixels.shape[1:3], size)
    if (h, w) == tuple(pixels.shape[1:3]):
        return pixels
    method = RESAMPLING[resample]
    return np.stack([np.asarray(Image.fromarray(frame).resize((w, h), method)) for frame in pixels])


def playback_order(pixels: np.ndarray, pingpong: bool = False) -> np.ndarray:
    """Frames in play order: forward, or forward then back without repeating the turning frames."""
    if pingpong and len(pixels) > 2:
        return np.concatenate([pixels, pixels[-2:0:-1]])
    return pixels


def tile(pixels: np.ndarray, columns: int | None = None, gap: int = 2, background=(255, 255, 255)) -> np.ndarray:
    """Frames laid out row by row on one image (a contact sheet; ``columns = len(frames)`` is a strip)."""
    count, h, w, _ = pixels.shape
    columns = max(1, min(count, columns or math.ceil(math.sqrt(count))))
    rows = math.ceil(count / columns)
    sheet = np.empty((rows * h + (rows - 1) * gap, columns * w + (columns - 1) * gap, 3), np.uint8)
    sheet[:] = np.asarray(background, np.uint8)
    for index, frame in enumerate(pixels):
        r, c = divmod(index, columns)
        sheet[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = frame
    return sheet


def write_gif(path: Path, frames: np.ndarray, fps: float, repeat: bool = True) -> float:
    """Write an animated GIF; returns the frame rate actually stored."""
    delay_cs = max(2, round(100.0 / min(fps, GIF_MAX_FPS)))
    images = [Image.fromarray(frame) for frame in frames]
    options = {"save_all": True, "append_images": images[1:], "duration": delay_cs * 10, "optimize": False}
    if repeat:
        options["loop"] = 0
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", **options)
    return 100.0 / delay_cs


def write_mp4(path: Path, frames: np.ndarray, fps: float, quality: int = 8) -> float:
    """Write an H.264 MP4 (yuv420p, playable everywhere); odd sizes are padded by one edge pixel."""
    import imageio_ffmpeg

    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    h, w = frames.shape[1:3]
    with atomic_path(path) as tmp:
        writer = imageio_ffmpeg.write_frames(
            str(tmp), (w, h), fps=fps, codec="libx264", quality=quality, macro_block_size=1,
            ffmpeg_log_level="error", output_params=["-f", "mp4", "-movflags", "+faststart"],
        )
        writer.send(None)
        try:
            for frame in frames:
                writer.send(np.ascontiguousarray(frame))
        finally:
            writer.close()
    return float(fps)


def write_png(path: Path, image: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG", optimize=False)


def export_frames(pixels: np.ndarray, out: str | Path, *, fps: float = 12.0, size=None, resample: str = "nearest",
                  pingpong: bool = False, repeat: bool = True, layout: str = "sheet", columns: int | None = None,
                  gap: int = 2) -> dict:
    """Write frames (uint8 F x H x W x 3) to ``out`` by its suffix; returns the export settings as recorded."""
    out = Path(out).expanduser()
    kind = check_output(out)
    if not np.isfinite(fps) or not 0 < fps <= MAX_FPS:
        raise InputError(f"--fps {fps}: must be above 0 and at most {MAX_FPS}")
    if layout not in LAYOUTS:
        raise InputError(f"--layout {layout}: choose {' or '.join(LAYOUTS)}")
    if len(pixels) == 0:
        raise InputError("no frames to export")
    h, w = output_size(pixels.shape[1:3], size)
    if len(pixels) * h * w * 3 > MAX_EXPORT_BYTES:
        raise InputError(f"--size {size}: {len(pixels)} frames of {h}x{w} would take {len(pixels) * h * w * 3 / 2**30:.1f} GiB; "
                         f"at most {MAX_EXPORT_BYTES / 2**30:.0f} GiB: use a smaller --size or fewer --steps")
    frames = resize_frames(pixels, size, resample)
    record = {"path": str(out.resolve()), "format": kind, "size": list(frames.shape[1:3]), "resample": resample}
    if kind == "png":
        columns = len(frames) if layout == "strip" else columns
        write_png(out, tile(frames, columns, gap))
        record.update(layout=layout, columns=columns, gap=gap, frames=len(frames))
        return record
    frames = playback_order(frames, pingpong)
    stored_fps = write_gif(out, frames, fps, repeat) if kind == "gif" else write_mp4(out, frames, fps)
    if kind == "mp4" and not repeat:
        log.debug("MP4 files carry no loop flag; players decide whether to repeat")
    record.update(fps=stored_fps, requested_fps=float(fps), pingpong=bool(pingpong), repeat=bool(repeat), frames=len(frames))
    return record


def write_sidecar(out: str | Path, payload: dict) -> Path:
    path = sidecar_path(out)
    write_json(path, payload)
    return path

"""Find, open, validate and resize images; make thumbnails.

Everything a messy real-world folder can throw at us ends here as either an RGB
``PIL.Image`` or an :class:`ImageError` whose message is the reason recorded in
the scope: EXIF rotation, palette / grey / 16-bit / CMYK / alpha modes,
animated files, decompression bombs, truncated or corrupt data, files that are
not images, empty files, unreadable files and symbolic-link loops.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError, InputError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico"}
)
RESIZE_POLICIES = ("center-crop", "pad")
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb limit
DEFAULT_BACKGROUND = (255, 255, 255)
THUMB_SIZE = 96

warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


@dataclass(frozen=True)
class FoundImage:
    """An image file found on disk; ``error`` is set when it cannot even be opened (broken link)."""

    path: Path  # absolute
    relpath: str  # posix path relative to the folder given
    error: str = ""


@dataclass
class PreparedImage:
    """One decoded image ready for the model, with what the manifest records about it."""

    pixels: np.ndarray  # H x W x 3 uint8, already resized to the model's size
    width: int  # original size, after EXIF rotation
    height: int
    thumbnail: bytes  # JPEG


# --------------------------------------------------------------------------- finding files


def find_images(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    exclude: Iterable[str | os.PathLike] = (),
) -> tuple[Path, list[FoundImage]]:
    """Find image files under a folder (recursively) or take a list of file paths.

    Returns the root the relative paths refer to and the files sorted by relative
    path. Hidden files and folders are skipped, as are folders in ``exclude``
    (for example a scope written inside the image folder) and folder links that
    lead back into a folder already walked.
    """
    extensions = {e.lower() for e in extensions}
    if isinstance(source, (str, os.PathLike)):
        root = Path(source).expanduser()
        if not root.exists():
            raise InputError(f"{root}: no such folder")
        if root.is_file():
            return root.parent.resolve(), [FoundImage(root.resolve(), root.name)]
        if not root.is_dir():
            raise InputError(f"{root}: not a folder of images")
        root = root.resolve()
        excluded = {os.path.realpath(p) for p in exclude}
        return root, _walk(root, extensions, excluded)
    return _from_list([Path(p).expanduser() for p in source])


def _from_list(paths: list[Path]) -> tuple[Path, list[FoundImage]]:
    if not paths:
        raise InputError("the list of image paths is empty")
    absolute = [Path(os.path.abspath(p)) for p in paths]
    root = Path(os.path.commonpath([p.parent for p in absolute]))
    found = []
    for path in absolute:
        error = "" if path.exists() else ("broken symbolic link" if path.is_symlink() else "file not found")
        found.append(FoundImage(path, path.relative_to(root).as_posix(), error))
    return root, sorted(found, key=lambda f: f.relpath)


def _walk(root: Path, extensions: set[str], excluded: set[str]) -> list[FoundImage]:
    found: list[FoundImage] = []
    seen_dirs = {os.path.realpath(root)}

    def on_error(exc: OSError) -> None:
        log.warning("%s: cannot list folder (%s); skipped", exc.filename, exc.strerror)

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=on_error):
        kept = []
        for name in sorted(dirnames):
            if name.startswith("."):
                continue
            full = os.path.join(dirpath, name)
            real = os.path.realpath(full)
            if real in excluded:
                continue
            if real in seen_dirs:
                log.warning("%s: folder link leads back to a folder already searched (loop); skipped", full)
                continue
            seen_dirs.add(real)
            kept.append(name)
        dirnames[:] = kept
        for name in filenames:
            if name.startswith(".") or Path(name).suffix.lower() not in extensions:
                continue
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            error = "" if full.exists() else "broken symbolic link"
            found.append(FoundImage(full, rel, error))
    found.sort(key=lambda f: f.relpath)
    return found


def label_from_relpath(relpath: str) -> str:
    """The first folder of a relative path (ImageFolder convention), or '' for top-level files."""
    parts = relpath.split("/")
    return parts[0] if len(parts) > 1 else ""


# --------------------------------------------------------------------------- opening


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_file(path: Path) -> bytes:
    """Read a whole file, turning OS errors into a recordable reason."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise ImageError("file not found (deleted while running, or a broken link)") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except IsADirectoryError:
        raise ImageError("is a folder, not a file") from None
    except OSError as exc:
        raise ImageError(f"cannot read file ({exc.strerror or exc})") from None
    if not data:
        raise ImageError("file is empty (0 bytes)")
    return data


def open_image(
    data: bytes,
    background: tuple[int, int, int] = DEFAULT_BACKGROUND,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
) -> tuple[Image.Image, int, int]:
    """Decode image bytes to an RGB image, upright, alpha composited on ``background``.

    Returns the image and its full-resolution (upright) width and height. For
    JPEGs ``draft_size`` lets the decoder skip detail finer than that size.
    """
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        kind = _claimed_format(data)
        if kind:
            raise ImageError(f"corrupt {kind} file (starts like one, but its header cannot be read)") from None
        raise ImageError("not an image file (format not recognised)") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image too large ({exc})") from None
    except Exception as exc:  # corrupt headers raise anything from SyntaxError to struct.error
        raise ImageError(f"corrupt image header ({type(exc).__name__}: {exc})") from None

    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError(f"image has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(
            f"image too large ({width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}; "
            "a decompression-bomb guard: raise it with --max-pixels)"
        )
    if _exif_swaps_axes(img):
        width, height = height, width
    try:
        if draft_size is not None and img.format == "JPEG":
            img.draft("RGB", draft_size)
        img.load()
        img = ImageOps.exif_transpose(img) or img
        rgb = to_rgb(img, background)
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(_decode_reason(exc)) from None
    return rgb, width, height


_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def _claimed_format(data: bytes) -> str:
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return ""


def _exif_swaps_axes(img: Image.Image) -> bool:
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:
        return False
    return orientation in (5, 6, 7, 8)


def _decode_reason(exc: Exception) -> str:
    text = str(exc)
    if "truncated" in text.lower():
        return f"truncated file ({text})"
    return f"corrupt image data ({type(exc).__name__}: {text})"


def to_rgb(img: Image.Image, background: tuple[int, int, int] = DEFAULT_BACKGROUND) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited on ``background``."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_high_depth_to_uint8(img)).convert("RGB")
    if mode == "P" and "transparency" not in img.info:
        return img.convert("RGB")
    if mode in ("RGBA", "LA", "La", "RGBa", "PA", "P") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _high_depth_to_uint8(img: Image.Image) -> np.ndarray:
    values = np.asarray(img).astype(np.float64)
    if img.mode == "F":
        top = 1.0 if np.nanmax(values, initial=0.0) <= 1.0 else 255.0
    elif img.mode.startswith("I;16") or np.nanmax(values, initial=0.0) > 255:
        top = 65535.0
    else:
        top = 255.0
    scaled = np.nan_to_num(values / top * 255.0, nan=0.0)
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- resizing


def parse_size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    """``64`` -> (64, 64); ``(h, w)`` kept; validated."""
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        pair = (int(size), int(size))
    else:
        pair = tuple(int(s) for s in size)
        if len(pair) != 2:
            raise InputError(f"size {size!r}: give one number or (height, width)")
    if min(pair) < 8 or max(pair) > 16384:
        raise InputError(f"size {size!r}: must be between 8 and 16384 pixels")
    return pair  # type: ignore[return-value]


def fit_image(
    img: Image.Image,
    size: tuple[int, int],
    policy: str = "center-crop",
    background: tuple[int, int, int] = DEFAULT_BACKGROUND,
) -> Image.Image:
    """Resize to ``size`` = (height, width): ``center-crop`` fills and crops, ``pad`` fits and pads."""
    target_h, target_w = size
    w, h = img.size
    if (w, h) == (target_w, target_h):
        return img
    if policy == "center-crop":
        scale = max(target_w / w, target_h / h)
    elif policy == "pad":
        scale = min(target_w / w, target_h / h)
    else:
        raise InputError(f"resize policy {policy!r}: choose one of {', '.join(RESIZE_POLICIES)}")
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    if policy == "center-crop":
        # Resample only the source region that survives the crop: scaling a 1 x 400,000 image up to fill the
        # target first would make a picture of billions of pixels.
        left, top = (new_w - target_w) // 2, (new_h - target_h) // 2
        box = (left * w / new_w, top * h / new_h, (left + target_w) * w / new_w, (top + target_h) * h / new_h)
        return img.resize((target_w, target_h), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)
    resized = img.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    canvas = Image.new("RGB", (target_w, target_h), tuple(background))
    canvas.paste(resized, ((target_w - new_w) // 2, (target_h - new_h) // 2))
    return canvas


def thumbnail_bytes(img: Image.Image, size: int = THUMB_SIZE, quality: int = 85) -> bytes:
    """A JPEG preview whose longer side is ``size`` pixels (the whole image, not the crop)."""
    w, h = img.size
    scale = min(1.0, size / max(w, h))
    thumb = img if scale == 1.0 else img.resize(
        (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR, reducing_gap=2.0
    )
    out = io.BytesIO()
    thumb.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def prepare_image(
    data: bytes,
    size: tuple[int, int],
    policy: str = "center-crop",
    background: tuple[int, int, int] = DEFAULT_BACKGROUND,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    thumb_size: int | None = THUMB_SIZE,
) -> PreparedImage:
    """Decode, validate and resize one image file's bytes for the model."""
    draft = (size[1], size[0])
    if thumb_size:
        draft = (max(draft[0], thumb_size), max(draft[1], thumb_size))
    img, width, height = open_image(data, background, max_pixels, draft_size=draft)
    fitted = fit_image(img, size, policy, background)
    thumb = thumbnail_bytes(img, thumb_size) if thumb_size else b""
    return PreparedImage(np.asarray(fitted, dtype=np.uint8), width, height, thumb)


def load_image(path: str | os.PathLike, background: tuple[int, int, int] = DEFAULT_BACKGROUND) -> Image.Image:
    """Open one image file as upright RGB, raising :class:`ImageError` naming the file on failure."""
    try:
        img, _, _ = open_image(read_file(Path(path)), background)
    except ImageError as exc:
        raise ImageError(f"{path}: {exc}") from None
    return img


# --------------------------------------------------------------------------- arrays


def pixels_to_tensor_range(pixels: np.ndarray) -> np.ndarray:
    """uint8 N x H x W x 3 -> float32 N x 3 x H x W in [-1, 1] (the diffusers convention).

    The result keeps the input's channels-last memory order (a strided view, not a copy to NCHW order).
    """
    return (pixels.transpose(0, 3, 1, 2).astype(np.float32) / 127.5) - 1.0


def tensor_range_to_pixels(images: np.ndarray) -> np.ndarray:
    """float N x 3 x H x W in [-1, 1] -> uint8 N x H x W x 3."""
    scaled = (np.clip(images, -1.0, 1.0) + 1.0) * 127.5
    return np.round(scaled).astype(np.uint8).transpose(0, 2, 3, 1)


def as_uint8_images(array: np.ndarray) -> np.ndarray:
    """Normalise an in-memory image set to uint8 N x H x W x 3.

    Accepts N x H x W (grey) or N x H x W x {1,3,4}; uint8, or floats in [0, 1].
    """
    array = np.asarray(array)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3, 4):
        raise InputError(f"image array of shape {array.shape}: expected N x H x W or N x H x W x {{1,3,4}}")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.number):
            raise InputError(f"image array of dtype {array.dtype}: expected uint8 or floats in [0, 1]")
        top = 1.0 if float(np.nanmax(array, initial=0.0)) <= 1.0 else 255.0
        array = np.clip(np.round(np.nan_to_num(array.astype(np.float64)) / top * 255.0), 0, 255).astype(np.uint8)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    elif array.shape[-1] == 4:
        alpha = array[..., 3:4].astype(np.float32) / 255.0
        array = np.round(array[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return array


def write_array_images(array: np.ndarray, folder: str | os.PathLike, labels: Sequence | None = None) -> Path:
    """Write an in-memory image set as PNG files (``<label>/<index>.png`` when labels are given)."""
    folder = Path(folder)
    pixels = as_uint8_images(array)
    width = max(5, len(str(len(pixels))))
    for index, image in enumerate(pixels):
        sub = folder / str(labels[index]) if labels is not None else folder
        sub.mkdir(parents=True, exist_ok=True)
        target = sub / f"{index:0{width}d}.png"
        if not target.exists():
            Image.fromarray(image).save(target)
    return folder

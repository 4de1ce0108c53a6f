"""Reproducible colour image sets built from images that ship with packages.

Two sets, each a uint8 array N x size x size x 3 plus a *group* label per image
(the source an image came from, so that held-out splits never share a source):

``icons``
    Application icons of the Papirus icon theme (``Papirus/64x64/apps``),
    rendered from SVG with ``rsvg-convert`` and composited on white. One group
    per icon file.
``photos``
    Multi-scale patches cut from photographs and artwork: the KDE Plasma and
    GNOME wallpapers, scikit-image's colour sample photos and scikit-learn's
    two sample photos. One group per source picture.

Needs (Debian) ``papirus-icon-theme librsvg2-bin plasma-workspace-wallpapers
gnome-backgrounds`` and (pip) ``scikit-image``; install with

    apt-get install -y papirus-icon-theme librsvg2-bin plasma-workspace-wallpapers gnome-backgrounds
    pip install scikit-image

Sets are cached under ``benchmarks/data/`` (gitignored) as ``.npz`` files
without pickles; the same arguments give the same images on any machine with
the same package versions.

    from benchmarks.colour_sets import load_set, split_by_group
    images, groups = load_set("photos", size=32, count=2000)
    train, test = split_by_group(groups, holdout=0.2, seed=0)
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

from latentscope.errors import InputError
from latentscope.fileio import atomic_path
from latentscope.images import fit_image, open_image, read_file

DATA_DIR = Path(__file__).resolve().parent / "data"
SET_NAMES = ("icons", "photos")
VERSION = 1  # bump when the recipe changes, so stale caches are not reused
ICON_ROOT = Path("/usr/share/icons/Papirus/64x64")
ICON_DIR = ICON_ROOT / "apps"
PLASMA_DIR = Path("/usr/share/wallpapers")
GNOME_DIR = Path("/usr/share/backgrounds/gnome")
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
INSTALL_HINT = (
    "apt-get install -y papirus-icon-theme librsvg2-bin plasma-workspace-wallpapers gnome-backgrounds; pip install scikit-image"
)


def load_set(name: str, size: int = 32, count: int = 2000, seed: int = 0, cache: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8 N x size x size x 3) and their group labels (str), built once and cached."""
    if name not in SET_NAMES:
        raise InputError(f"colour set {name!r}: choose one of {', '.join(SET_NAMES)}")
    builder = build_icons if name == "icons" else build_photos
    path = DATA_DIR / f"{name}-{size}px-{count}-seed{seed}-v{VERSION}.npz"
    return _cached(path, lambda: builder(size, count, seed), cache)


def _cached(path: Path, build, cache: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``build()``'s (images, groups), read from ``path`` when stored there, else built and (with ``cache``) stored."""
    if cache and path.exists():
        with np.load(path, allow_pickle=False) as stored:
            return stored["images"], stored["groups"]
    images, groups = build()
    if cache:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, images=images, groups=groups)
    return images, groups


def split_by_group(groups: np.ndarray, holdout: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a train / held-out split in which no group is on both sides (about ``holdout`` of the images held out)."""
    names, counts = np.unique(groups, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(names))
    held, total = set(), 0
    for i in order:
        if total >= holdout * len(groups):
            break
        held.add(names[i])
        total += counts[i]
    is_held = np.array([g in held for g in groups])
    return np.flatnonzero(~is_held), np.flatnonzero(is_held)


def describe(images: np.ndarray, groups: np.ndarray) -> str:
    return f"{len(images)} images of {images.shape[1]}x{images.shape[2]} from {len(np.unique(groups))} sources"


# --------------------------------------------------------------------------- icons


def _icon_hashes(folder: Path) -> dict[str, Path]:
    """Content hash -> first file (by name) with that content, over the folder's icons (symbolic-link aliases removed)."""
    unique: dict[str, Path] = {}
    for path in sorted({p.resolve() for p in folder.glob("*.svg") if p.is_file()}, key=lambda p: p.name):
        unique.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), path)
    return unique


def build_icons(size: int, count: int, seed: int, folder: Path = ICON_DIR, at_most: bool = False,
                exclude: frozenset = frozenset()) -> tuple[np.ndarray, np.ndarray]:
    """``count`` distinct Papirus icons of ``folder`` (default: the app icons), rendered at ``size``; ``at_most``: all
    of them when the folder has fewer; ``exclude``: content hashes left out."""
    if not folder.is_dir() or shutil.which("rsvg-convert") is None:
        raise InputError(f"icons set needs Papirus and rsvg-convert: {INSTALL_HINT}")
    unique = {h: p for h, p in _icon_hashes(folder).items() if h not in exclude}
    unique = sorted(unique.values(), key=lambda p: p.name)
    count = min(count, len(unique)) if at_most else count
    if len(unique) < count:
        raise InputError(f"icons set: only {len(unique)} distinct icons in {folder}, asked for {count}")
    chosen = [unique[i] for i in sorted(np.random.default_rng(seed).choice(len(unique), count, replace=False))]
    images = np.stack([_render_svg(path, size) for path in chosen])
    return images, np.array([p.stem for p in chosen])


def load_icon_context(context: str, size: int = 32, count: int = 120, seed: int = 0) -> np.ndarray:
    """Up to ``count`` distinct icons of another Papirus context (``places``, ``devices``, ``mimetypes``; no app icon
    among them, as their content differs), cached like the sets."""
    path = DATA_DIR / f"icons-{context}-{size}px-{count}-seed{seed}-v{VERSION}.npz"
    images, _ = _cached(path, lambda: build_icons(size, count, seed, ICON_ROOT / context, at_most=True,
                                                  exclude=frozenset(_icon_hashes(ICON_DIR))))
    return images


def _render_svg(path: Path, size: int, background=(255, 255, 255)) -> np.ndarray:
    png = subprocess.run(
        ["rsvg-convert", "-w", str(size), "-h", str(size), "--keep-aspect-ratio", str(path)],
        check=True, capture_output=True,
    ).stdout
    img, _, _ = open_image(png, background)
    return np.asarray(fit_image(img, (size, size), "pad", background), dtype=np.uint8)


# --------------------------------------------------------------------------- photos


def photo_sources() -> dict[str, Image.Image]:
    """Every source picture, by group name, as RGB images."""
    sources: dict[str, Image.Image] = {}
    for folder in sorted(PLASMA_DIR.glob("*/contents/images")):
        pictures = [p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".png")]
        if pictures:
            # the rendition nearest 1920 pixels wide: detailed enough, quick to decode
            best = min(pictures, key=lambda p: abs(_width_from_name(p) - 1920))
            sources[f"plasma/{folder.parent.parent.name}"] = _load(best)
    for path in sorted(GNOME_DIR.glob("*.webp")) + sorted(GNOME_DIR.glob("*.jpg")):
        sources[f"gnome/{path.stem}"] = _load(path)
    try:
        import skimage.data
    except ImportError:
        raise InputError(f"photos set needs scikit-image: {INSTALL_HINT}") from None
    for name in SKIMAGE_PHOTOS:
        sources[f"skimage/{name}"] = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
    from sklearn.datasets import load_sample_images

    sample = load_sample_images()
    for filename, array in zip(sample.filenames, sample.images):
        sources[f"sklearn/{Path(filename).stem}"] = Image.fromarray(array)
    if len(sources) < 20:
        raise InputError(f"photos set: found only {len(sources)} source pictures: {INSTALL_HINT}")
    return sources


def _width_from_name(path: Path) -> int:
    try:
        return int(path.stem.split("x")[0])
    except ValueError:
        return 0


def _load(path: Path) -> Image.Image:
    img, _, _ = open_image(read_file(path))
    return img


def build_photos(size: int, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` square patches, as many from each source, of random side between 2x ``size`` and half the picture."""
    sources = photo_sources()
    names = sorted(sources)
    rng = np.random.default_rng(seed)
    per_source = np.full(len(names), count // len(names))
    per_source[: count % len(names)] += 1
    images, groups = [], []
    for name, n in zip(names, per_source):
        picture = sources[name]
        w, h = picture.size
        low, high = min(2 * size, min(w, h)), max(min(2 * size, min(w, h)), min(w, h) // 2)
        for _ in range(n):
            side = int(round(np.exp(rng.uniform(np.log(low), np.log(high)))))
            left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            patch = picture.crop((left, top, left + side, top + side))
            images.append(np.asarray(patch.resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8))
            groups.append(name)
    return np.stack(images), np.array(groups)


def save_grid(images: np.ndarray, path: str | Path, columns: int = 16) -> None:
    """A contact sheet of the first images, for looking at a set."""
    n = min(len(images), columns * columns)
    rows = -(-n // columns)
    h, w = images.shape[1:3]
    sheet = np.full((rows * h, columns * w, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, columns)
        sheet[r * h : (r + 1) * h, c * w : (c + 1) * w] = images[i]
    buffer = io.BytesIO()
    Image.fromarray(sheet).save(buffer, format="PNG")
    Path(path).write_bytes(buffer.getvalue())


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Build (and cache) the colour image sets.")
    parser.add_argument("--size", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--grid", help="write a contact sheet per set into this folder")
    args = parser.parse_args()
    for set_name in SET_NAMES:
        for px in args.size:
            imgs, grps = load_set(set_name, px, args.count)
            print(f"{set_name} @ {px}: {describe(imgs, grps)}")
            if args.grid:
                Path(args.grid).mkdir(parents=True, exist_ok=True)
                rng_order = np.random.default_rng(0).permutation(len(imgs))
                save_grid(imgs[rng_order], Path(args.grid) / f"{set_name}-{px}.png")

"""The points a walk passes through: image ids, image files, map coordinates or raw latents.

Each end has a JSON form (recorded in export sidecars so a walk can be replayed)::

    {"kind": "id", "id": 12}                          an image of the scope
    {"kind": "file", "path": "/abs/cat.png", "sha256": "..."}   encoded on the fly
    {"kind": "path", "path": "cats/tabby.png"}        an image of the scope, by its path in the scope
    {"kind": "map", "map": "default", "xy": [1.5, -0.3]}        a point of a 2-D map
    {"kind": "latent", "latent": [[[...]]]}           a latent given directly (API)

On the command line an end is ``12`` or ``id:12``, ``map:1.5,-0.3`` (with
``--map NAME``), or a file path (``file:PATH`` when the path looks like a number);
a path that is no file here names the scope's image of that path (relative to the
encoded folder, as ``info``, ``score`` and the explorer list it).
Files are prepared exactly like ``latentscope encode`` prepared the scope's
images (size, resize policy, background) and encoded with the latent mean; a
file whose content is already in the scope resolves to that image.

Map points go through ``projection.inverse_transform(xy) -> latents`` of any
projection object (see :func:`latents_from_map`); :func:`load_map_projection`
is where a stored map's projection is loaded.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ImageError, InputError, ScopeError

NUMBER = re.compile(r"^\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*$")
DEFAULT_MAP = "default"


@dataclass
class End:
    """A resolved walk end: its latent, the real latent row it is (if any), and its JSON form."""

    latent: np.ndarray  # C x h x w float32
    spec: dict
    row: int | None = None

    @property
    def label(self) -> str:
        kind = self.spec["kind"]
        if kind == "id":
            return f"image {self.spec['id']}"
        if kind == "file":
            return Path(self.spec["path"]).name
        if kind == "path":  # the scope's own path, which tells apart images of the same name in other folders
            return self.spec["path"]
        if kind == "map":
            x, y = self.spec["xy"]
            return f"map {self.spec['map']} ({x:.3g}, {y:.3g})"
        if "strength" in self.spec:
            return f"{self.spec['strength']:+g} x direction"
        return "latent"


def parse_end(value, map_name: str = DEFAULT_MAP) -> dict:
    """The JSON form of an end given as an id, a CLI string, a path, a latent array, or already a dict."""
    if isinstance(value, dict):
        return _check_spec(value)
    if isinstance(value, (bool, np.bool_)):
        raise InputError(f"walk end {value!r}: give an image id, a file path or map:X,Y")
    if isinstance(value, (int, np.integer)):
        return {"kind": "id", "id": int(value)}
    if isinstance(value, np.ndarray):
        return {"kind": "latent", "latent": np.asarray(value, np.float32).tolist()}
    if isinstance(value, os.PathLike):
        return _file_spec(Path(value))
    if isinstance(value, str):
        return _parse_text(value.strip(), map_name)
    raise InputError(f"walk end {value!r}: give an image id, a file path, map:X,Y or a latent array")


def _parse_text(text: str, map_name: str) -> dict:
    if text.isdigit() or (text.startswith("id:") and text[3:].strip().isdigit()):
        return {"kind": "id", "id": int(text.removeprefix("id:"))}
    if text.startswith("map:"):
        parts = text[4:].split(",")
        if len(parts) != 2 or not all(NUMBER.match(p) for p in parts):
            raise InputError(f"walk end {text!r}: a map point is written map:X,Y, for example map:1.5,-0.3")
        return {"kind": "map", "map": map_name, "xy": [float(parts[0]), float(parts[1])]}
    return _file_spec(Path(text.removeprefix("file:")))


def _file_spec(path: Path) -> dict:
    if path.expanduser().is_file():
        return {"kind": "file", "path": str(path.expanduser().resolve())}
    return {"kind": "path", "path": path.as_posix()}  # resolved against the scope's images when the walk runs


def not_found(path: str) -> InputError:
    return InputError(f"walk end {path!r}: not an image id, a map:X,Y point, an image path of the scope, "
                      "or an existing image file")


def _check_spec(spec: dict) -> dict:
    kind = spec.get("kind")
    required = {"id": ("id",), "file": ("path",), "path": ("path",), "map": ("map", "xy"), "latent": ("latent",)}
    if kind not in required or any(key not in spec for key in required[kind]):
        raise InputError(f"walk end {spec!r}: not a valid end (kinds: {', '.join(required)})")
    return dict(spec)


def parse_group(value) -> dict:
    """A group of scope images for direction walks: ``label:NAME``, ``ids:1,2,3``, ``COLUMN=VALUE`` (a metadata
    column), a list of ids, or a dict."""
    if isinstance(value, dict) and ("label" in value or "ids" in value or {"column", "value"} <= set(value)):
        return dict(value)
    if isinstance(value, (list, tuple, np.ndarray)):
        return {"ids": [int(v) for v in value]}
    text = str(value).strip()
    if text.startswith("label:") and text[6:]:
        return {"label": text[6:]}
    if text.startswith("ids:"):
        try:
            return {"ids": [int(v) for v in text[4:].split(",") if v.strip()]}
        except ValueError:
            pass
    column, equals, wanted = text.partition("=")
    if equals and column.strip():
        return {"column": column.strip(), "value": wanted.strip()}
    raise InputError(f"image group {value!r}: write label:NAME, ids:1,2,3 or COLUMN=VALUE")


# ------------------------------------------------------------------------ map coordinates


def latents_from_map(projection, xy, latent_shape) -> np.ndarray:
    """Latents at 2-D map points through any projection with ``inverse_transform(xy) -> latents``."""
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    if not np.isfinite(xy).all():
        raise InputError(f"map point {xy.tolist()}: coordinates must be finite numbers")
    latents = np.asarray(projection.inverse_transform(xy), np.float32)
    expected = int(np.prod(latent_shape))
    if latents.size != len(xy) * expected:
        raise ScopeError(f"the map's inverse_transform gave {latents.shape[1:]} values per point, the model's latents have {tuple(latent_shape)}")
    return latents.reshape(len(xy), *latent_shape)


def load_map_projection(scope, name: str):
    """The fitted projection behind the scope's map ``name`` (needs the projection module, issue 4)."""
    if name not in scope.table_names("maps"):
        known = ", ".join(scope.table_names("maps")) or "none yet; make one with 'latentscope project'"
        raise ScopeError(f"--map {name}: the scope has no such map (have: {known})")
    try:
        from .. import projection
    except ImportError:
        raise ScopeError(f"--map {name}: map coordinates need the projection module, which this installation lacks") from None
    loader = getattr(projection, "load_projection", None)
    if loader is None:
        raise ScopeError(f"--map {name}: this version cannot load a map's projection to invert it; give image ids or files")
    return loader(scope, name)


# ------------------------------------------------------------------------ files


def prepare_file(path: str | os.PathLike, preprocess: dict, default_size) -> tuple[np.ndarray, str]:
    """Pixels (1 x H x W x 3) of an image file prepared the way the scope's images were, and its sha256."""
    from ..images import DEFAULT_BACKGROUND, DEFAULT_MAX_PIXELS, prepare_image, read_file, sha256_bytes

    size = tuple(preprocess.get("size") or default_size or ())
    if len(size) != 2:
        raise InputError(f"{path}: cannot tell what size to encode it at (the scope records no size and the model has no sample_size)")
    try:
        data = read_file(Path(path))
        prepared = prepare_image(
            data, size, preprocess.get("resize", "center-crop"), tuple(preprocess.get("background", DEFAULT_BACKGROUND)),
            int(preprocess.get("max_pixels", DEFAULT_MAX_PIXELS)), thumb_size=None,
        )
    except ImageError as exc:
        raise ImageError(f"{path}: {exc}") from None
    return prepared.pixels[None], sha256_bytes(data)

"""Numba start-up: one persistent compile cache for umap-learn and pynndescent.

umap-learn and pynndescent compile their numba functions on first call, which
costs tens of seconds in every new process. Most of umap-learn's functions are
not marked ``cache=True``, so numba would never keep them. This module is the
one place that

* points numba's on-disk cache (``NUMBA_CACHE_DIR``) at latentscope's cache
  folder; numba reads that variable when it is first imported, so every import
  of umap / pynndescent in latentscope goes through :func:`load_umap`;
* turns on disk caching for every jitted function of the two packages that can
  be cached (functions taking another jitted function as an argument, such as
  pynndescent's ``nn_descent``, cannot: numba recompiles those in each process);
* remembers, in a small marker file, that the cache has been filled, so the
  progress output can say "compiling UMAP (first run only)" only when it is so.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from importlib import metadata
from pathlib import Path

from ..errors import StorageError
from ..fileio import write_json
from ..runtime import cache_dir

log = logging.getLogger(__name__)

CACHE_ENV = "NUMBA_CACHE_DIR"
CACHED_PACKAGES = ("umap", "pynndescent")
WARM_MARKER = "latentscope-warm.json"
_LOADED = False


def numba_cache_dir() -> Path:
    """Where compiled functions are kept: ``$NUMBA_CACHE_DIR`` if set, else ``<latentscope cache>/numba``."""
    return Path(os.environ.get(CACHE_ENV) or Path(cache_dir()) / "numba")


def configure_numba_cache() -> Path:
    """Set ``NUMBA_CACHE_DIR`` (unless the user set it) before numba is imported."""
    folder = numba_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault(CACHE_ENV, str(folder))
    if "numba" in sys.modules:
        # numba was imported by someone else first: its config is already read, so set it directly
        from numba.core import config

        if not config.CACHE_DIR:
            config.CACHE_DIR = os.environ[CACHE_ENV]
    return folder


def enable_disk_caching(packages=CACHED_PACKAGES) -> int:
    """Give every not-yet-cached jitted function of ``packages`` an on-disk cache; returns how many."""
    from numba.core.caching import NullCache
    from numba.core.registry import CPUDispatcher

    enabled = 0
    for name, module in list(sys.modules.items()):
        if module is None or name.split(".")[0] not in packages:
            continue
        for value in list(vars(module).values()):
            if isinstance(value, CPUDispatcher) and isinstance(value._cache, NullCache):
                value.enable_caching()
                enabled += 1
    return enabled


def load_umap():
    """Import umap-learn (and pynndescent) with the persistent numba cache in place."""
    global _LOADED
    if _LOADED:
        return sys.modules["umap"]
    configure_numba_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImportWarning)  # "Tensorflow not installed; ParametricUMAP will be unavailable"
        import umap
    enable_disk_caching()
    from numba.core.errors import NumbaWarning

    # functions that take a jitted function as argument cannot be kept on disk; numba says so on every compile
    warnings.filterwarnings("ignore", message=".*Cannot cache compiled function", category=NumbaWarning)
    _LOADED = True
    return umap


def _versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0]}
    for name in ("numba", "umap-learn", "pynndescent"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "?"
    return found


def _marker_path() -> Path:
    return numba_cache_dir() / WARM_MARKER


def is_warm(variant: str) -> bool:
    """True when a previous process compiled ``variant`` into the cache with the same library versions."""
    try:
        marker = json.loads(_marker_path().read_text())
    except (OSError, ValueError):
        return False
    return marker.get("versions") == _versions() and variant in marker.get("variants", [])


def mark_warm(variant: str) -> None:
    path = _marker_path()
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        marker = {}
    if marker.get("versions") != _versions():
        marker = {"versions": _versions(), "variants": []}
    if variant not in marker["variants"]:
        marker["variants"].append(variant)
    try:
        write_json(path, marker)
    except (OSError, StorageError) as exc:  # a read-only cache only costs start-up time
        log.debug("could not write %s: %s", path, exc)

"""Atomic file writes: write to a temporary name beside the target, fsync, rename.

A crash (or a full disk) at any moment leaves either the old file or the new one,
never half of one. Temporary files carry the ``.tmp`` suffix so that ``doctor``
can find and remove leftovers.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import StorageError

TMP_SUFFIX = ".tmp"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    """The process's file-creation mask, read without changing it where the system tells it (Linux; a small read
    beside each write's fsync)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore
    os.umask(mask)
    return mask


def _final_mode(path: Path) -> int:
    """The permissions ``path`` gets: those of the file it replaces, else what ``open()`` would give a new file
    (``mkstemp`` creates 0600 files, which other users of a shared scope or an exported morph could not read)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def save_pretrained(model, folder: Path) -> None:
    """``model.save_pretrained(folder)`` with safetensors, then the usual permissions on what it wrote: its weights
    come out 0600, which other users of a shared model folder could not read."""
    model.save_pretrained(folder, safe_serialization=True)
    mode = 0o666 & ~_umask()
    for written in Path(folder).iterdir():
        if written.is_file():
            os.chmod(written, mode)


def _storage_error(path: Path, exc: OSError) -> StorageError:
    reason = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
    return StorageError(f"{path}: could not write ({reason}); the previous version was left untouched")


def remove_unfinished_writes(folder: str | os.PathLike) -> None:
    """Remove the temporary files of :func:`atomic_path` writes into ``folder`` whose process was killed.
    Only for a caller that no other writer can race there (it holds the folder's lock or owns it)."""
    for leftover in Path(folder).glob(".*" + TMP_SUFFIX):
        leftover.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces ``path``, on failure it is removed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as exc:  # a read-only or full disk: nothing was written
        raise _storage_error(path, exc) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, _final_mode(path))
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _storage_error(path, exc) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    write_bytes(path, text.encode("utf-8"))


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(array), allow_pickle=False)


def load_npy(path: str | os.PathLike, mmap: bool = False) -> np.ndarray:
    """Load a ``.npy`` file; pickled object arrays are refused."""
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def write_parquet(path: str | os.PathLike, frame) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in JSON")

"""The scope: one directory holding everything latentscope knows about one image set.

=====================  =====================================================
``scope.json``         model reference, preprocessing, per-stage provenance
``images.parquet``     one row per image file found (``id``, ``path``, ``sha256``,
                       ``width``, ``height``, ``status``, ``error``, ...)
``latents.npy``        N_ok x C x h x w float16, one row per ``ok`` image in id order
``maps/<name>.parquet``     ``id``, ``x``, ``y`` per projection
``scores/<name>.parquet``   ``id``, ``score``, ... per scoring run
``metadata/default.parquet``  ``id`` plus the columns of the user's own tables
                       (``latentscope annotate``); its ``label`` overrides folder labels
``thumbs/<id>.jpg``    previews for the dashboard
``.partial/``          resumable work in progress (safe to delete)
=====================  =====================================================

Every file is written atomically. Replacing the manifest and the latents
together is a two-phase commit (``*.next`` files plus a commit marker) so a crash
between the two renames is rolled forward on the next open.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import logging
import os
import platform
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pandas as pd

from . import __version__
from .errors import ScopeError, StorageError
from .fileio import TMP_SUFFIX, load_npy, read_json, write_json, write_parquet

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
META_FILE = "scope.json"
MANIFEST_FILE = "images.parquet"
LATENTS_FILE = "latents.npy"
COMMIT_MARKER = "commit.json"
NEXT_SUFFIX = ".next"
MANIFEST_COLUMNS = {
    "id": "int64",
    "path": "string",
    "sha256": "string",
    "width": "int32",
    "height": "int32",
    "status": "string",
    "error": "string",
    "label": "string",
    "row": "int64",  # row in latents.npy, -1 when status is error
    "bytes": "int64",
    "mtime_ns": "int64",
}
TABLE_KINDS = ("maps", "scores", "metadata")
TABLE_NOUNS = {"maps": "map", "scores": "score", "metadata": "metadata table"}
METADATA_NAME = "default"
TABLE_MARKER_GLOB = "commit-*.json"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def library_versions(*names: str) -> dict[str, str]:
    """Versions of the libraries a stage depended on, for provenance."""
    from importlib import metadata

    versions = {"latentscope": __version__, "python": platform.python_version()}
    for name in ("numpy", "torch", "diffusers", *names):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def stage_entry(params: dict, **extra: Any) -> dict:
    """What ``scope.json`` records for one run of a stage: parameters, library versions, time and extras."""
    return {"params": params, "versions": library_versions(*extra.pop("libraries", ())), "time": now_iso(), **extra}


def empty_manifest() -> pd.DataFrame:
    return pd.DataFrame({col: pd.Series(dtype=dtype) for col, dtype in MANIFEST_COLUMNS.items()})


def normalise_manifest(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    for col, dtype in MANIFEST_COLUMNS.items():
        if col not in frame:
            frame[col] = "" if dtype == "string" else (-1 if col == "row" else 0)
        frame[col] = frame[col].astype(dtype)
    extra = [c for c in frame.columns if c not in MANIFEST_COLUMNS]
    return frame[list(MANIFEST_COLUMNS) + extra].sort_values("id").reset_index(drop=True)


def uncommitted_files(root: Path, *suffixes: str) -> list[Path]:
    """Staged ``*.next`` files (and files with other ``suffixes``) at the top of a scope, in maps/ and scores/, and
    beside the commit markers at the top of .partial/.

    Everything written there is written while holding the scope's lock, so a
    process that holds the lock and finds such a file knows its writer died.
    """
    folders = (root, root / ".partial", *(root / kind for kind in TABLE_KINDS))
    return sorted(p for folder in folders for suffix in (NEXT_SUFFIX, *suffixes) for p in folder.glob("*" + suffix))


def check_name(name: str, what: str) -> str:
    if not NAME_PATTERN.match(name or ""):
        raise ScopeError(f"{what} name {name!r}: use letters, digits, '.', '_' and '-' (at most 64)")
    return name


class Scope:
    """A scope directory. Open an existing one with ``Scope(path)``; make one with :meth:`create`."""

    def __init__(self, path: str | os.PathLike, recover: bool = True):
        self.path = Path(path).expanduser().resolve()
        if not (self.path / META_FILE).is_file():
            raise ScopeError(f"{self.path}: not a scope (no {META_FILE}); create one with 'latentscope encode'")
        self._manifest: pd.DataFrame | None = None
        self._metadata: pd.DataFrame | None = None
        self._latents: np.ndarray | None = None
        self._lock_depth = 0
        if recover:
            self.recover()

    @classmethod
    def create(cls, path: str | os.PathLike, meta: dict) -> "Scope":
        path = Path(path).expanduser().resolve()
        if (path / META_FILE).exists():
            raise ScopeError(f"{path}: already a scope")
        if path.exists() and not path.is_dir():
            raise ScopeError(f"{path}: exists and is not a folder")
        path.mkdir(parents=True, exist_ok=True)
        base = {"format": FORMAT_VERSION, "created": now_iso(), "stages": {}, "maps": {}, "scores": {}}
        write_json(path / META_FILE, {**base, **meta})
        return cls(path)

    @staticmethod
    def exists(path: str | os.PathLike) -> bool:
        return (Path(path).expanduser() / META_FILE).is_file()

    # ------------------------------------------------------------------ metadata

    @property
    def meta(self) -> dict:
        try:
            meta = read_json(self.path / META_FILE)
        except (OSError, ValueError) as exc:
            raise ScopeError(f"{self.path / META_FILE}: unreadable ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
            raise ScopeError(f"{self.path / META_FILE}: not a scope of format {FORMAT_VERSION}")
        return meta

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise writes to the scope between processes (re-entrant within one ``Scope``)."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        try:
            handle = open(self.path / ".lock", "a+")
        except OSError as exc:
            raise StorageError(f"{self.path}: cannot write to this scope ({exc.strerror or exc}); "
                               "nothing was changed") from None
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            self._lock_depth = 1
            try:
                yield
            finally:
                self._lock_depth = 0
                fcntl.flock(handle, fcntl.LOCK_UN)

    def update_meta(self, **changes: Any) -> dict:
        with self.locked():
            meta = self.meta
            meta.update(changes)
            write_json(self.path / META_FILE, meta)
        return meta

    def record(self, section: str, name: str, params: dict, **extra: Any) -> None:
        """Record a stage's parameters, library versions and time under ``meta[section][name]``."""
        self._set_entry(section, name, stage_entry(params, **extra))

    def _set_entry(self, section: str, name: str, entry: dict) -> None:
        with self.locked():
            meta = self.meta
            meta.setdefault(section, {})[name] = entry
            write_json(self.path / META_FILE, meta)

    @property
    def model(self) -> dict:
        return self.meta.get("model", {})

    @property
    def images_root(self) -> Path:
        root = self.meta.get("images_root")
        if not root:
            raise ScopeError(f"{self.path}: scope.json has no images_root")
        root_path = Path(root)
        return (self.path / root_path).resolve() if not root_path.is_absolute() else root_path

    # ------------------------------------------------------------------ manifest and latents

    def manifest(self) -> pd.DataFrame:
        if self._manifest is None:
            path = self.path / MANIFEST_FILE
            if not path.exists():
                self._manifest = empty_manifest()
            else:
                try:
                    self._manifest = normalise_manifest(pd.read_parquet(path))
                except Exception as exc:
                    raise ScopeError(f"{path}: unreadable manifest ({exc}); run 'latentscope doctor'") from None
        return self._manifest

    def ok_manifest(self) -> pd.DataFrame:
        """Rows with latents, in latent-row order; labels from the attached metadata where it gives one."""
        frame = self.manifest()
        ok = frame[frame["status"] == "ok"].sort_values("row").reset_index(drop=True)
        metadata = self.metadata()
        if "label" in metadata:
            given = metadata.set_index("id")["label"].fillna("").astype(str)
            override = ok["id"].map(given[given != ""])
            ok["label"] = override.where(override.notna(), ok["label"]).astype("string")
        return ok

    def metadata(self) -> pd.DataFrame:
        """The attached per-image metadata (``id`` plus the user's columns; only ``id`` when there is none)."""
        if self._metadata is None:
            if METADATA_NAME in self.table_names("metadata"):
                self._metadata = self.read_table("metadata", METADATA_NAME)
            else:
                self._metadata = pd.DataFrame({"id": pd.Series(dtype="int64")})
        return self._metadata

    def latents(self) -> np.ndarray:
        """All latents as a read-only float16 memory map (N_ok x C x h x w)."""
        if self._latents is None:
            path = self.path / LATENTS_FILE
            n_ok = int((self.manifest()["status"] == "ok").sum())
            if not path.exists():
                if n_ok:
                    raise ScopeError(f"{path}: missing but the manifest lists {n_ok} encoded images; run 'latentscope doctor'")
                shape = self.model.get("latent_shape") or [0]
                return np.zeros((0, *shape), np.float16)
            try:
                array = load_npy(path, mmap=True)
            except Exception as exc:
                raise ScopeError(f"{path}: unreadable latents ({exc}); run 'latentscope doctor'") from None
            if array.shape[0] < n_ok:
                raise ScopeError(
                    f"{path}: has {array.shape[0]} rows but the manifest lists {n_ok} encoded images; run 'latentscope doctor'"
                )
            self._latents = array[:n_ok]
        return self._latents

    def rows_for_ids(self, ids) -> np.ndarray:
        frame = self.manifest().set_index("id")
        ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        missing = [int(i) for i in ids if i not in frame.index]
        if missing:
            raise ScopeError(f"{self.path}: no image with id {missing[0]}")
        rows = frame.loc[ids, "row"].to_numpy()
        if (rows < 0).any():
            bad = int(ids[np.argmax(rows < 0)])
            raise ScopeError(f"{self.path}: image {bad} has no latent (it failed to load: {frame.loc[bad, 'error']})")
        return rows

    def latents_for_ids(self, ids) -> np.ndarray:
        """float32 latents for the given image ids."""
        return np.asarray(self.latents()[self.rows_for_ids(ids)], dtype=np.float32)

    def image_path(self, image_id: int) -> Path:
        """The file of a manifest id, refusing paths that escape the image folder."""
        frame = self.manifest()
        match = frame.loc[frame["id"] == int(image_id), "path"]
        if match.empty:
            raise ScopeError(f"{self.path}: no image with id {image_id}")
        root = self.images_root
        path = (root / match.iloc[0]).resolve()
        if root != path and root not in path.parents:
            raise ScopeError(f"{self.path}: manifest path {match.iloc[0]!r} escapes the image folder")
        return path

    def inside(self, *parts: str, what: str = "path") -> Path:
        """``self.path / parts`` for names read from the scope's own files, refusing any that leave the scope.

        ``scope.json`` and the commit markers may come from someone else: an
        absolute path, a ``..`` or a symbolic link out of the folder is refused.
        """
        relative = Path(*(str(p) for p in parts))
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise ScopeError(f"{self.path}: {what} {str(relative)!r} escapes the scope folder; the scope was tampered with")
        path = self.path / relative
        resolved = path.resolve()
        if resolved != self.path and self.path not in resolved.parents:
            raise ScopeError(f"{self.path}: {what} {str(relative)!r} leads out of the scope folder (a link to {resolved})")
        return path

    def thumb_path(self, image_id: int) -> Path:
        return self.path / "thumbs" / f"{int(image_id)}.jpg"

    def invalidate(self) -> None:
        """Forget cached manifest, metadata and latents (after another writer changed them)."""
        self._manifest = None
        self._metadata = None
        self._latents = None

    # ------------------------------------------------------------------ committing manifest + latents

    def partial_dir(self, stage: str) -> Path:
        return self.path / ".partial" / stage

    def commit(self, manifest: pd.DataFrame, latents_next: Path) -> None:
        """Replace manifest and latents together (``latents_next`` is a complete .npy file)."""
        manifest = normalise_manifest(manifest)
        manifest_next = self.path / (MANIFEST_FILE + NEXT_SUFFIX)
        with self.locked():
            write_parquet(manifest_next, manifest)
            marker = self.path / ".partial" / COMMIT_MARKER
            write_json(marker, {"latents": latents_next.name, "manifest": manifest_next.name, "time": now_iso()})
            self._roll_forward(marker)
        self.invalidate()

    def _roll_forward(self, marker: Path) -> None:
        plan = read_json(marker)
        for name, final in ((plan["latents"], LATENTS_FILE), (plan["manifest"], MANIFEST_FILE)):
            if name != final + NEXT_SUFFIX:  # the marker is read from disk: it names nothing else
                raise ValueError(f"it names {name!r}, not {final + NEXT_SUFFIX}")
            source = self.path / name
            if source.exists():
                os.replace(source, self.path / final)
        marker.unlink()

    def recover(self) -> None:
        """Finish commits a crash interrupted, and drop half-written files that were never committed."""
        markers = [self.path / ".partial" / COMMIT_MARKER, *sorted((self.path / ".partial").glob(TABLE_MARKER_GLOB))]
        if not any(m.exists() for m in markers) and not uncommitted_files(self.path, TMP_SUFFIX):
            return
        with self.locked():  # a writer holds the lock while its staged files are on their way in
            self._recover(markers)

    def _recover(self, markers: list[Path]) -> None:
        for marker in markers:
            if not marker.exists():
                continue
            try:
                if marker.name == COMMIT_MARKER:
                    self._roll_forward(marker)
                else:
                    self._roll_forward_table(marker)
                log.info("%s: finished an interrupted commit (%s)", self.path, marker.name)
            except (OSError, ValueError, KeyError, TypeError, ScopeError) as exc:
                raise ScopeError(f"{marker}: unreadable or tampered commit marker ({exc}); move it away to open the scope") from None
        for leftover in uncommitted_files(self.path, TMP_SUFFIX):  # their writers held the lock, so they are dead
            leftover.unlink(missing_ok=True)

    # ------------------------------------------------------------------ maps, scores and metadata

    def _table_path(self, kind: str, name: str) -> Path:
        return self.path / kind / f"{check_name(name, TABLE_NOUNS[kind])}.parquet"

    def write_table(self, kind: str, name: str, frame: pd.DataFrame, params: dict, *,
                    side: dict[str, Callable[[Path], None]] | None = None, drop: Iterable[str] = (), **extra: Any) -> Path:
        """Store ``kind/name.parquet`` and its ``scope.json`` entry together (a crash leaves both old or both new).

        ``side`` maps names of files that belong with the table (in the same folder:
        heatmaps, calibration) to a function writing one to the path it is given;
        ``drop`` names files of the old version to remove. The table and side files
        are written as ``*.next``, then a commit marker holding the new entry; rolling
        forward renames them into place, removes the dropped files, records the
        entry and removes the marker, and :meth:`recover` repeats that after a crash.
        """
        path = self._table_path(kind, name)
        side = dict(side or {})
        with self.locked():
            for file_name, write in side.items():
                write(self._side_path(kind, file_name, NEXT_SUFFIX))
            write_parquet(path.with_name(path.name + NEXT_SUFFIX), frame)
            marker = self.path / ".partial" / f"commit-{kind}-{name}.json"
            write_json(marker, {"kind": kind, "name": name, "entry": stage_entry(params, **extra), "side": list(side),
                                "drop": [d for d in drop if d not in side]})
            self._roll_forward_table(marker)
        return path

    def _side_path(self, kind: str, file_name: str, suffix: str = "") -> Path:
        if not isinstance(file_name, str) or "/" in file_name or "\\" in file_name or file_name in ("", ".", ".."):
            raise ValueError(f"side file name {file_name!r} is not a plain file name")
        return self.inside(kind, file_name + suffix, what=f"{kind} file")

    def _roll_forward_table(self, marker: Path) -> None:
        plan = read_json(marker)
        kind, name, entry = plan["kind"], plan["name"], plan["entry"]
        if kind not in TABLE_KINDS or not isinstance(entry, dict):
            raise ValueError(f"not a table commit ({kind!r})")
        path = self._table_path(kind, name)
        for file_name in [*plan.get("side", []), path.name]:
            staged = self._side_path(kind, file_name, NEXT_SUFFIX)
            if staged.exists():
                os.replace(staged, self._side_path(kind, file_name))
        for file_name in plan.get("drop", []):
            self._side_path(kind, file_name).unlink(missing_ok=True)
        self._set_entry(kind, name, entry)
        marker.unlink()
        if kind == "metadata":
            self._metadata = None

    def read_table(self, kind: str, name: str) -> pd.DataFrame:
        path = self._table_path(kind, name)
        if not path.exists():
            known = ", ".join(self.table_names(kind)) or "none yet"
            raise ScopeError(f"{path}: no {TABLE_NOUNS[kind]} named {name!r} in this scope (have: {known})")
        try:
            return pd.read_parquet(path)
        except Exception as exc:
            raise ScopeError(f"{path}: unreadable ({exc}); run 'latentscope doctor'") from None

    def table_names(self, kind: str) -> list[str]:
        folder = self.path / kind
        return sorted(p.stem for p in folder.glob("*.parquet")) if folder.is_dir() else []

    def write_map(self, name: str, frame: pd.DataFrame, params: dict, **extra: Any) -> Path:
        return self.write_table("maps", name, frame, params, **extra)

    def read_map(self, name: str = "default") -> pd.DataFrame:
        return self.read_table("maps", name)

    def write_scores(self, name: str, frame: pd.DataFrame, params: dict, **extra: Any) -> Path:
        return self.write_table("scores", name, frame, params, **extra)

    def read_scores(self, name: str = "default") -> pd.DataFrame:
        return self.read_table("scores", name)

    def clear_partial(self, stage: str) -> None:
        shutil.rmtree(self.partial_dir(stage), ignore_errors=True)

    def leftover_temp_files(self) -> list[Path]:
        return sorted(p for p in self.path.rglob("*" + TMP_SUFFIX) if p.is_file())

    def __repr__(self) -> str:
        return f"Scope({str(self.path)!r})"

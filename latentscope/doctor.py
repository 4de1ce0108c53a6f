"""``latentscope doctor``: find what is damaged in a scope and repair what can be repaired.

Nothing computed is deleted silently: every action is reported, unreadable map,
score or metadata files are moved to ``.damaged/`` rather than removed, and latents are
only recomputed for rows that were lost.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import ScopeError
from .fileio import TMP_SUFFIX, atomic_path, read_json, write_json, write_parquet
from .scope import (COMMIT_MARKER, LATENTS_FILE, MANIFEST_FILE, META_FILE, NEXT_SUFFIX, TABLE_KINDS, TABLE_MARKER_GLOB,
                    TABLE_NOUNS, Scope, normalise_manifest, uncommitted_files)

log = logging.getLogger(__name__)

RERUN = {"maps": "project", "scores": "score", "metadata": "annotate"}


@dataclass
class Finding:
    problem: str
    action: str = ""  # what was done, or "" when it was only reported
    fixed: bool = False


@dataclass
class DoctorReport:
    scope: Path
    findings: list[Finding] = field(default_factory=list)

    def add(self, problem: str, action: str = "", fixed: bool = False) -> None:
        self.findings.append(Finding(problem, action, fixed))

    @property
    def healthy(self) -> bool:
        return all(f.fixed for f in self.findings)

    def lines(self) -> list[str]:
        if not self.findings:
            return [f"{self.scope}: healthy, nothing to do"]
        out = []
        for f in self.findings:
            status = "fixed" if f.fixed else "NOT FIXED"
            out.append(f"[{status}] {f.problem}" + (f" -> {f.action}" if f.action else ""))
        remaining = sum(not f.fixed for f in self.findings)
        out.append(f"{self.scope}: {len(self.findings)} problems, {remaining} left")
        return out


def salvage_latents(path: Path) -> tuple[np.ndarray, int, tuple[int, ...]]:
    """The complete rows of a possibly truncated ``.npy`` file, the rows its header declares, and the row shape."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(handle)
        offset = handle.tell()
    if fortran or dtype.hasobject:
        raise ScopeError(f"{path}: not a latents file (Fortran order or object dtype)")
    row_shape = tuple(shape[1:])
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
    available = (path.stat().st_size - offset) // row_bytes if row_bytes else 0
    complete = int(min(shape[0], available))
    if complete == 0:
        return np.zeros((0, *row_shape), dtype), int(shape[0]), row_shape
    data = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(complete, *row_shape))
    return np.array(data), int(shape[0]), row_shape


def diagnose(path: str | os.PathLike, repair: bool = True, model: str | None = None, device: str = "auto") -> DoctorReport:
    """Check a scope; with ``repair`` fix what can be fixed. Returns the report."""
    root = Path(path).expanduser().resolve()
    report = DoctorReport(root)
    if not (root / META_FILE).is_file():
        raise ScopeError(f"{root}: not a scope (no {META_FILE})")
    try:
        read_json(root / META_FILE)
    except (OSError, ValueError) as exc:
        raise ScopeError(f"{root / META_FILE}: unreadable ({exc}); the scope cannot be repaired without it") from None

    if model:
        from .codec import check_scope_model

        check_scope_model(model, Scope(root, recover=False))
    _leftovers(root, report, repair)
    scope = Scope(root, recover=repair)  # recovering finishes an interrupted commit
    with scope.locked():  # repairs write where other writers hold the lock too
        manifest = _check_manifest(scope, report)
        if manifest is not None:
            _check_latents(scope, manifest, report, repair, model, device)
            _check_tables(scope, report, repair)
            _check_thumbnails(scope, report, repair)
    return report


def _leftovers(root: Path, report: DoctorReport, repair: bool) -> None:
    finishing = set()  # staged files an interrupted commit will move into place
    marker = root / ".partial" / COMMIT_MARKER
    if marker.exists():
        report.add("a commit was interrupted", "finished it" if repair else "", fixed=repair)
        finishing |= {root / (MANIFEST_FILE + NEXT_SUFFIX), root / (LATENTS_FILE + NEXT_SUFFIX)}
    for marker in sorted((root / ".partial").glob(TABLE_MARKER_GLOB)):
        table = marker.stem.removeprefix("commit-").replace("-", "/", 1)
        report.add(f"writing {table} was interrupted", "finished it" if repair else "", fixed=repair)
        finishing.add(root / f"{table}.parquet{NEXT_SUFFIX}")
    for leftover in sorted(root.rglob("*" + TMP_SUFFIX)):
        if leftover.is_file():
            if repair:
                leftover.unlink()
            report.add(f"half-written temporary file {leftover.relative_to(root)}", "removed" if repair else "", fixed=repair)
    for leftover in (p for p in uncommitted_files(root) if p not in finishing):
        report.add(f"uncommitted file {leftover.relative_to(root)}", "removed" if repair else "", fixed=repair)


def _check_manifest(scope: Scope, report: DoctorReport) -> pd.DataFrame | None:
    path = scope.path / MANIFEST_FILE
    if not path.exists():
        if (scope.path / LATENTS_FILE).exists():
            report.add(f"{MANIFEST_FILE} is missing but latents exist", "rerun 'latentscope encode' into this scope")
        return None
    try:
        manifest = normalise_manifest(pd.read_parquet(path))
    except Exception as exc:
        report.add(f"{MANIFEST_FILE} is unreadable ({exc})", "rerun 'latentscope encode' into a new scope")
        return None
    if manifest["id"].duplicated().any():
        report.add(f"{MANIFEST_FILE} has duplicate ids", "rerun 'latentscope encode' into a new scope")
        return None
    ok = manifest[manifest["status"] == "ok"]
    if sorted(ok["row"]) != list(range(len(ok))):
        report.add(f"{MANIFEST_FILE}: latent rows are not 0..{len(ok) - 1}", "rerun 'latentscope encode' into a new scope")
        return None
    return manifest


def _check_latents(scope: Scope, manifest: pd.DataFrame, report: DoctorReport, repair: bool, model, device) -> None:
    path = scope.path / LATENTS_FILE
    ok = manifest[manifest["status"] == "ok"].sort_values("row")
    expected = tuple(scope.model.get("latent_shape") or ())
    if not path.exists():
        salvaged, declared, row_shape = np.zeros((0, *expected), np.float16), 0, expected
        problem = f"{LATENTS_FILE} is missing ({len(ok)} encoded images lost)"
    else:
        try:
            salvaged, declared, row_shape = salvage_latents(path)
        except (ValueError, OSError, ScopeError) as exc:
            report.add(f"{LATENTS_FILE} is unreadable ({exc})", "re-encoding all images" if repair else "")
            salvaged, declared, row_shape = np.zeros((0, *expected), np.float16), 0, expected
        if expected and row_shape != expected:
            report.add(f"{LATENTS_FILE} rows have shape {row_shape}, scope.json says {expected}", "rerun encode into a new scope")
            return
        if len(salvaged) == len(ok) == declared:
            return
        if len(salvaged) > len(ok):
            orphans = len(salvaged) - len(ok)
            if repair:
                _write_latents(path, salvaged[: len(ok)])
            report.add(f"{LATENTS_FILE} has {orphans} rows no manifest entry refers to (orphans)",
                       "dropped them" if repair else "", fixed=repair)
            return
        problem = f"{LATENTS_FILE} holds {len(salvaged)} complete rows of the {len(ok)} the manifest lists (truncated)"
    if not repair:
        report.add(problem)
        return
    lost = ok.iloc[len(salvaged):]
    rebuilt, failed = _reencode(scope, lost, model, device)
    latents = np.concatenate([salvaged.astype(np.float16), rebuilt]) if len(rebuilt) else salvaged
    if failed:
        manifest = manifest.copy()
        for image_id, reason in failed.items():
            manifest.loc[manifest["id"] == image_id, ["status", "error"]] = ["error", f"latent lost and {reason}"]
        keep = manifest["status"] == "ok"
        manifest["row"] = -1
        manifest.loc[keep, "row"] = np.arange(int(keep.sum()))
        write_parquet(scope.path / MANIFEST_FILE, manifest)
    _write_latents(path, latents)
    scope.invalidate()
    action = f"kept {len(salvaged)} rows, re-encoded {len(rebuilt)}"
    if failed:
        action += f", marked {len(failed)} as errors (their files are gone or changed)"
    report.add(problem, action, fixed=True)


def _reencode(scope: Scope, rows: pd.DataFrame, model, device) -> tuple[np.ndarray, dict[int, str]]:
    """Re-encode the given manifest rows from their image files; files that changed or vanished are reported."""
    from .codec import Codec
    from .images import prepare_image, read_file, sha256_bytes
    from .errors import ImageError

    shape = tuple(scope.model.get("latent_shape"))
    if rows.empty:
        return np.zeros((0, *shape), np.float16), {}
    codec = Codec.from_pretrained(model or scope.model["reference"], device=device)
    pre = scope.meta.get("preprocess", {})
    encoded, failed, pixels = [], {}, []
    for row in rows.itertuples(index=False):
        try:
            data = read_file(scope.image_path(row.id))
            if sha256_bytes(data) != row.sha256:
                raise ImageError("the file changed since it was encoded")
            pixels.append(prepare_image(data, tuple(pre["size"]), pre["resize"], tuple(pre["background"]), thumb_size=None).pixels)
        except (ImageError, ScopeError) as exc:
            failed[int(row.id)] = str(exc)
            pixels.append(None)
    good = [p for p in pixels if p is not None]
    if good:
        encoded = codec.encode_pixels(np.stack(good), refine=int(pre.get("refine", 0))).astype(np.float16)
    return (encoded if len(good) else np.zeros((0, *shape), np.float16)), failed


def _write_latents(path: Path, latents: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(latents.astype(np.float16)), allow_pickle=False)


def _check_tables(scope: Scope, report: DoctorReport, repair: bool) -> None:
    meta = scope.meta
    ok_ids = set(scope.manifest().loc[lambda m: m["status"] == "ok", "id"])
    for kind in TABLE_KINDS:
        recorded = dict(meta.get(kind, {}))
        present = set(scope.table_names(kind))
        for name in sorted(set(recorded) - present):
            if repair:
                with scope.locked():
                    fresh = scope.meta
                    fresh.get(kind, {}).pop(name, None)
                    write_json(scope.path / META_FILE, fresh)
            report.add(f"scope.json lists {TABLE_NOUNS[kind]} {name!r} but its file is missing",
                       f"removed the entry; rerun 'latentscope {RERUN[kind]}'" if repair else "",
                       fixed=repair)
        for name in sorted(present):
            path = scope.path / kind / f"{name}.parquet"
            try:
                frame = pd.read_parquet(path)
            except Exception as exc:
                if repair:
                    target = scope.path / ".damaged" / kind / f"{name}.{int(time.time())}.parquet"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(path, target)
                report.add(f"{kind}/{name}.parquet is unreadable ({type(exc).__name__})",
                           f"moved to {target.relative_to(scope.path)}" if repair else "", fixed=repair)
                continue
            if "id" not in frame:
                report.add(f"{kind}/{name}.parquet has no id column")
                continue
            orphans = ~frame["id"].isin(ok_ids)
            if orphans.any():
                if repair:
                    write_parquet(path, frame[~orphans])
                report.add(f"{kind}/{name}.parquet has {int(orphans.sum())} rows for ids not in the manifest",
                           "dropped them" if repair else "", fixed=repair)


def _check_thumbnails(scope: Scope, report: DoctorReport, repair: bool) -> None:
    from .images import load_image, thumbnail_bytes

    ok = scope.manifest().loc[lambda m: m["status"] == "ok"]
    missing = [int(i) for i in ok["id"] if not scope.thumb_path(i).is_file()]
    if not missing:
        return
    made = 0
    if repair:
        scope.thumb_path(0).parent.mkdir(exist_ok=True)
        for image_id in missing:
            try:
                data = thumbnail_bytes(load_image(scope.image_path(image_id)))
            except Exception as exc:  # a vanished file leaves the thumbnail missing; reported below
                log.warning("thumbnail %s: %s", image_id, exc)
                continue
            with atomic_path(scope.thumb_path(image_id)) as tmp:
                tmp.write_bytes(data)
            made += 1
    report.add(f"{len(missing)} thumbnails are missing", f"regenerated {made}" if repair else "", fixed=repair and made == len(missing))

"""Per-image metadata from the user's own table, attached to a scope.

A CSV, TSV, Parquet or JSON table with one row per image (labels, captions,
measurements, flags: any columns) is matched to the scope's encoded images by a
key column holding a file path (relative to the image folder, to a folder above
it, or absolute), a file name, a file name without its extension, or a scope
image id. The matched columns are stored as ``metadata/default.parquet`` (``id``
plus the table's columns), which other tools can open. The explorer colours by
them and shows them, walks take ``COLUMN=VALUE`` groups, and a ``label`` column
overrides the labels taken from folder names (:meth:`Scope.ok_manifest`).

Attaching a second table adds its columns; for a column both tables have, the
new values replace the old ones for the images the new table names.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from .errors import InputError, ScopeError
from .scope import MANIFEST_COLUMNS, METADATA_NAME, Scope

log = logging.getLogger(__name__)

MATCHES = ("auto", "path", "name", "stem", "id")
# The table an image folder may carry at its top (Hugging Face's image-folder layout), attached by encode.
FOLDER_METADATA = ("metadata.csv", "metadata.jsonl", "metadata.parquet")
KEY_NAMES = ("path", "filepath", "file_path", "image_path", "relpath", "file", "filename", "file_name", "image",
             "image_name", "name", "id", "image_id")
ID_NAMES = ("id", "image_id")
# Names the explorer and the scope already use for their own columns: a table column of that name is renamed.
TAKEN_NAMES = (set(MANIFEST_COLUMNS) - {"label"}) | {"x", "y", "z", "cluster", "none"}
READERS = {
    ".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet",
    ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl",
}
INDEX_COLUMN = re.compile(r"^Unnamed: \d+$")  # the row index pandas writes into a CSV by default
NO_MATCH, SHARED = -1, -2


@dataclass
class AnnotateSummary:
    """What attaching a table did: how rows were matched and which columns the scope gained."""

    table: Path
    key: str
    match: str
    rows: int
    matched: int
    images: int
    columns: list[str]
    renamed: dict[str, str] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)
    shared: int = 0
    without: int = 0

    def lines(self) -> list[str]:
        lines = [f"{self.table.name}: matched {self.matched:,} of {self.rows:,} rows to images by column "
                 f"{self.key!r} ({self.match}); columns: {', '.join(self.columns) or 'none'}"]
        if self.renamed:
            lines.append("renamed (the scope uses those names): "
                         + ", ".join(f"{old!r} -> {new!r}" for old, new in self.renamed.items()))
        missing = self.rows - self.matched - self.shared
        if missing:
            examples = ", ".join(repr(v) for v in self.unmatched[:3])
            lines.append(f"{_rows(missing)} no encoded image of the scope (for example {examples})")
        if self.shared:
            lines.append(f"{_rows(self.shared)} a file name that several images share; give paths to tell them apart")
        if self.without:
            lines.append(f"{self.without:,} of the scope's {self.images:,} images have no metadata")
        return lines


def _rows(n: int) -> str:
    return "1 row names" if n == 1 else f"{n:,} rows name"


# ---------------------------------------------------------------------- reading the table


def read_table(path: str | os.PathLike, as_text: bool = False) -> pd.DataFrame:
    """The user's table; ``as_text`` keeps a CSV's cells as written ('007' stays '007', not 7)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"{path}: {'is a folder, not a table' if path.is_dir() else 'no such file'}")
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise InputError(f"{path}: unknown table format {path.suffix or '(no suffix)'!r}; "
                         f"use one of {', '.join(sorted(READERS))}")
    text_options = {"dtype": str, "keep_default_na": False} if as_text else {}
    try:
        if kind in ("csv", "tsv"):
            frame = pd.read_csv(path, sep="," if kind == "csv" else "\t", encoding="utf-8-sig", **text_options)
        elif kind == "parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_json(path, lines=kind == "jsonl", orient=None if kind == "jsonl" else "records")
    except Exception as exc:  # each reader raises its own kinds of error for a broken file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: not a readable {kind.upper()} table ({reason})") from None
    if not isinstance(frame, pd.DataFrame) or frame.empty:
        raise InputError(f"{path}: the table has no rows")
    return _named_columns(frame, path)


def _named_columns(frame: pd.DataFrame, source: Path) -> pd.DataFrame:
    frame = frame.reset_index(drop=True)
    frame.columns = [str(c).strip() for c in frame.columns]
    duplicated = frame.columns[frame.columns.duplicated()]
    if len(duplicated):
        raise InputError(f"{source}: column {duplicated[0]!r} appears twice")
    return frame


# ---------------------------------------------------------------------- matching rows to images


def _clean_path(value: str) -> str:
    text = value.strip().replace("\\", "/")
    while text.startswith("./"):
        text = text[2:]
    return text


def _lookup(keys: pd.Series, ids: np.ndarray) -> dict[str, int]:
    """key -> id, with keys that several images share mapped to SHARED."""
    counts = keys.value_counts()
    return {key: (SHARED if counts[key] > 1 else int(image_id)) for key, image_id in zip(keys, ids)}


def _by_path(values: list[str], paths: pd.Series, ids: np.ndarray, root: Path | None) -> np.ndarray:
    """A value matches the longest tail of its path that is an image's path relative to the image folder."""
    known = dict(zip(paths, ids))
    found = np.full(len(values), NO_MATCH, np.int64)
    for i, value in enumerate(values):
        text = _clean_path(value)
        if root is not None and os.path.isabs(text) and Path(text).is_relative_to(root):
            text = Path(text).relative_to(root).as_posix()
        parts = PurePosixPath(text).parts
        for start in range(len(parts)):
            image_id = known.get("/".join(parts[start:]).lstrip("/"))
            if image_id is not None:
                found[i] = image_id
                break
    return found


def _by_part(values: list[str], paths: pd.Series, ids: np.ndarray, stem: bool) -> np.ndarray:
    part = (lambda p: PurePosixPath(p).stem) if stem else (lambda p: PurePosixPath(p).name)
    known = _lookup(paths.map(part), ids)
    return np.array([known.get(part(_clean_path(v)) or "", NO_MATCH) for v in values], np.int64)


def _by_id(values: list[str], ids: np.ndarray) -> np.ndarray:
    known = set(ids.tolist())
    found = np.full(len(values), NO_MATCH, np.int64)
    for i, value in enumerate(values):
        try:
            number = float(value)
        except ValueError:
            continue
        if number.is_integer() and int(number) in known:
            found[i] = int(number)
    return found


def match_rows(values: list[str], ok: pd.DataFrame, how: str, root: Path | None = None) -> np.ndarray:
    """The image id each key value names (NO_MATCH, or SHARED for a name several images have)."""
    paths, ids = ok["path"].astype(str), ok["id"].to_numpy(np.int64)
    if how == "path":
        return _by_path(values, paths, ids, root)
    if how in ("name", "stem"):
        return _by_part(values, paths, ids, stem=how == "stem")
    if how == "id":
        return _by_id(values, ids)
    raise InputError(f"match {how!r}: use one of {', '.join(MATCHES)}")


def _best_match(values: list[str], ok: pd.DataFrame, ways: tuple[str, ...], root: Path | None) -> tuple[str, np.ndarray]:
    best = None
    for how in ways:
        found = match_rows(values, ok, how, root)
        if best is None or (found >= 0).sum() > (best[1] >= 0).sum():
            best = (how, found)
    return best


def _ways(column: str, match: str) -> tuple[str, ...]:
    if match != "auto":
        return (match,)
    # small whole numbers in a column such as 'class' would pass for ids: only id-named columns are tried as ids
    return ("path", "name", "stem", "id") if column.lower() in ID_NAMES else ("path", "name", "stem")


def find_key(raw: pd.DataFrame, ok: pd.DataFrame, key: str | None, match: str, root: Path | None,
             table: Path) -> tuple[str, str, np.ndarray]:
    """(key column, way of matching, image id per row), choosing the column and the way when not given."""
    if key is not None:
        candidates = [key]
    else:
        named = [c for c in raw.columns if c.lower() in KEY_NAMES]
        candidates = named or list(raw.columns)
    best = None
    for column in candidates:
        values = raw[column].fillna("").astype(str).tolist()
        how, found = _best_match(values, ok, _ways(column, match), root)
        if best is None or (found >= 0).sum() > (best[2] >= 0).sum():
            best = (column, how, found)
    column, how, found = best
    if not (found >= 0).any():
        example = ok["path"].iloc[0] if len(ok) else "none: the scope has no encoded images"
        tried = f"column {column!r}" if key else f"columns {', '.join(map(repr, candidates[:6]))}"
        ways = "ids" if match == "id" else f"{match}s" if match != "auto" else "paths, file names and stems"
        raise InputError(f"{table}: no row matches an image of the scope (tried {tried} as {ways}; "
                         f"the scope's images look like {example!r}); name the key column with --key")
    return column, how, found


def _check_repeats(found: np.ndarray, ok: pd.DataFrame, table: Path) -> None:
    matched = found[found >= 0]
    unique, counts = np.unique(matched, return_counts=True)
    if (counts > 1).any():
        image_id = int(unique[np.argmax(counts > 1)])
        rows = np.flatnonzero(found == image_id)[:2] + 1
        path = ok.loc[ok["id"] == image_id, "path"].iloc[0]
        raise InputError(f"{table}: rows {rows[0]} and {rows[1]} both describe image {path!r}; keep one row per image")


# ---------------------------------------------------------------------- columns


def _is_missing(value) -> bool:
    return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and np.isnan(value))


def _as_text(value):
    if _is_missing(value):
        return None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    return json.dumps(value, default=str) if isinstance(value, (list, tuple, dict)) else str(value)


def _storable(series: pd.Series) -> pd.Series:
    """Columns Parquet and the explorer can use: a column of mixed or nested cells becomes text."""
    if series.dtype != object:
        return series
    kinds = {type(v) for v in series if not _is_missing(v)}
    if len(kinds) <= 1 and not kinds & {list, tuple, dict, np.ndarray}:
        return series
    return series.map(_as_text)


def _user_columns(frame: pd.DataFrame, key: str, label: str | None,
                  columns: list[str] | None) -> tuple[pd.DataFrame, dict[str, str]]:
    """The table's columns to store, the label column renamed to ``label`` and names the scope uses renamed."""
    keep = list(columns) if columns else [c for c in frame.columns if c != key and not INDEX_COLUMN.match(c)]
    if label and label not in keep:
        keep.append(label)
    chosen = frame[keep].copy()
    renamed = {}
    for name in chosen.columns:
        if name in TAKEN_NAMES or name.startswith("score:") or (label and name == "label" and label != "label"):
            renamed[name] = f"{name} (metadata)"
    if label:
        renamed[label] = "label"
    chosen = chosen.rename(columns=renamed)
    if "label" in chosen:
        chosen["label"] = chosen["label"].map(lambda v: "" if pd.isna(v) else str(v).strip())
    return chosen.apply(_storable), {old: new for old, new in renamed.items() if old != label or new != "label"}


# ---------------------------------------------------------------------- attaching


def annotate(scope: Scope | str | os.PathLike, table: str | os.PathLike | pd.DataFrame, key: str | None = None,
             match: str = "auto", label: str | None = None, columns: list[str] | None = None,
             replace: bool = False) -> AnnotateSummary:
    """Attach a table of per-image metadata to the scope's encoded images.

    ``key`` names the column that identifies images (default: a column named like
    ``path``, ``file``, ``filename``, ``image`` or ``id``, else the column that
    matches most images); ``match`` is how its values name images (``path``,
    ``name``, ``stem``, ``id``; default: whichever matches most rows); ``label``
    names a column to use as the images' labels; ``columns`` keeps only those;
    ``replace`` drops metadata attached before instead of adding to it.
    """
    scope = scope if isinstance(scope, Scope) else Scope(scope)
    if match not in MATCHES:
        raise InputError(f"match {match!r}: use one of {', '.join(MATCHES)}")
    if isinstance(table, pd.DataFrame):
        source, frame = Path("<table>"), _named_columns(table, Path("<table>"))
        raw = frame.astype(str).where(frame.notna(), "")
    else:
        source = Path(table).expanduser().resolve()
        frame, raw = read_table(source), read_table(source, as_text=True)
    for name in [*([key] if key else []), *(columns or []), *([label] if label else [])]:
        if name not in frame.columns:
            raise InputError(f"{source}: no column {name!r} (columns: {', '.join(frame.columns)})")
    ok = scope.ok_manifest()
    column, how, found = find_key(raw, ok, key, match, _images_root(scope), source)
    _check_repeats(found, ok, source)
    chosen, renamed = _user_columns(frame, column, label, columns)
    matched = found >= 0
    new = chosen[matched].assign(id=found[matched]).set_index("id")
    stored = _merge(scope.metadata().set_index("id"), new, replace)
    _write(scope, stored, {"table": str(source), "key": column, "match": how, "label": label,
                           "columns": list(new.columns), "matched": int(matched.sum())}, replace)
    return AnnotateSummary(
        table=source, key=column, match=how, rows=len(frame), matched=int(matched.sum()), images=len(ok),
        columns=list(new.columns), renamed=renamed, unmatched=raw.loc[found == NO_MATCH, column].astype(str).tolist()[:5],
        shared=int((found == SHARED).sum()), without=int((~ok["id"].isin(stored.index)).sum()),
    )


def _images_root(scope: Scope) -> Path | None:
    try:
        return scope.images_root
    except ScopeError:  # a scope without an image folder still matches relative paths, names and ids
        return None


def _merge(old: pd.DataFrame, new: pd.DataFrame, replace: bool) -> pd.DataFrame:
    if replace or old.empty:
        return new
    merged = new.combine_first(old)  # new values win; a cell the new table leaves empty keeps the old value
    order = [c for c in old.columns] + [c for c in new.columns if c not in old.columns]
    return merged[order]


def _write(scope: Scope, stored: pd.DataFrame, source: dict, replace: bool = False) -> None:
    frame = stored.reset_index().rename(columns={"index": "id"})
    frame["id"] = frame["id"].astype(np.int64)
    history = [] if replace else scope.meta.get("metadata", {}).get(METADATA_NAME, {}).get("sources", [])
    scope.write_table("metadata", METADATA_NAME, frame.sort_values("id").reset_index(drop=True), source,
                      sources=[*history, source], columns=[c for c in frame.columns if c != "id"])
    log.info("%s: metadata for %d images, columns %s", scope.path, len(frame), list(frame.columns[1:]))


def column_values(scope: Scope, column: str, where: str) -> pd.Series:
    """By image id, in the encoded images' order: their labels (``label``; empty is missing) or a metadata column.
    ``where`` names the request in the error for an unknown column."""
    ok = scope.ok_manifest()
    if column == "label":
        labels = ok.set_index("id")["label"].astype(object)
        return labels.where(labels != "")
    metadata = scope.metadata()
    if column not in metadata.columns or column == "id":
        known = ", ".join(c for c in metadata.columns if c != "id") or "none yet"
        raise InputError(f"{where}: the scope has no metadata column {column!r} (columns: {known}); attach a "
                         "table with 'latentscope annotate' or tag images in the explorer")
    return metadata.set_index("id")[column].reindex(ok["id"].to_numpy())


def matches_value(values: pd.Series, wanted: str) -> np.ndarray:
    """Which values equal ``wanted``: as text in any case, or as a number (1 = 1.0)."""
    equal = (values.astype(str).str.lower() == wanted.lower()).fillna(False).to_numpy(bool)
    try:
        number = float(wanted)
    except ValueError:
        return equal
    return equal | (pd.to_numeric(values, errors="coerce").to_numpy(np.float64) == number)


# ---------------------------------------------------------------------- tags


def check_tag_name(name) -> str:
    text = str(name or "").strip()
    if not text or len(text) > 64 or not text.isprintable():
        raise InputError(f"tag {text!r}: give a name of 1 to 64 printable characters")
    if text in TAKEN_NAMES or text in ("id", "label") or text.startswith("score:"):
        raise InputError(f"tag {text!r}: the scope uses that name for its own column; pick another")
    return text


def is_tag(series: pd.Series) -> bool:
    """A boolean column, also once images added later left gaps in it (which makes it an object column)."""
    return pd.api.types.is_bool_dtype(series) or series.dropna().map(lambda v: isinstance(v, (bool, np.bool_))).all()


def set_tag(scope: Scope | str | os.PathLike, name: str, ids, value: bool = True) -> int:
    """Mark images (``value`` True) or unmark them in the boolean metadata column ``name``; returns how many
    images carry the tag now. Other encoded images are False in a new tag column."""
    scope = scope if isinstance(scope, Scope) else Scope(scope)
    name = check_tag_name(name)
    ok_ids = pd.Index(scope.ok_manifest()["id"].to_numpy(np.int64))
    chosen = ok_ids.intersection(pd.Index(np.asarray(list(ids), np.int64)))
    if not len(chosen):
        raise InputError(f"tag {name!r}: none of the given ids is an encoded image of the scope")
    stored = scope.metadata().set_index("id")
    if name in stored and not is_tag(stored[name]):
        raise InputError(f"tag {name!r}: the metadata has a column of that name that is not a tag; pick another name")
    stored = stored.reindex(stored.index.union(ok_ids))
    column = stored[name].astype("boolean").fillna(False) if name in stored else pd.Series(False, index=stored.index)
    column.loc[chosen] = bool(value)
    stored[name] = column.astype(bool)
    _write(scope, stored, {"tag": name, "value": bool(value), "images": len(chosen)})
    return int(stored[name].sum())

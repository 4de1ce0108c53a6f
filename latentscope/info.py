"""What a scope holds, in a few lines: images, model, maps, scores and metadata (``latentscope info``).

Everything comes from the scope's own files; nothing is computed again.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path

import pandas as pd

from .metadata import is_tag
from .scope import Scope

TEXT_VALUES = 24  # a text column with more distinct values than this is described by its count only


def describe(scope: Scope | str | os.PathLike) -> dict:
    """The scope's contents as plain data (what ``latentscope info --json`` prints)."""
    scope = scope if isinstance(scope, Scope) else Scope(scope)
    meta = scope.meta
    preprocess = meta.get("preprocess", {})
    manifest = scope.manifest()
    ok = scope.ok_manifest()
    failed = manifest[manifest["status"] != "ok"]
    labels = ok["label"][ok["label"] != ""]
    return {
        "scope": str(scope.path),
        "created": meta.get("created"),
        "images_root": meta.get("images_root"),
        "model": {k: meta.get("model", {}).get(k) for k in ("class", "reference", "image_size", "latent_shape")},
        "latents": {"sample": bool(preprocess.get("sample", False)), "refine": int(preprocess.get("refine", 0))},
        "images": {"files": len(manifest), "encoded": len(ok), "failed": len(failed),
                   "failure_reasons": dict(Counter(failed["error"].astype(str)).most_common(5)),
                   "labels": int(labels.nunique())},
        "maps": {name: _map_facts(meta.get("maps", {}).get(name, {}), scope, name) for name in scope.table_names("maps")},
        "scores": {name: _score_facts(meta.get("scores", {}).get(name, {})) for name in scope.table_names("scores")},
        "metadata": {name: _column_facts(values) for name, values in scope.metadata().drop(columns="id").items()},
        "size_mb": round(_folder_bytes(scope.path) / 2**20, 1),
    }


def _map_facts(entry: dict, scope: Scope, name: str) -> dict:
    quality = entry.get("quality") or {}
    params = entry.get("params", {})
    return {"points": len(scope.read_map(name)), "dims": params.get("n_components"), "time": entry.get("time"),
            "n_neighbors": params.get("n_neighbors"), "min_dist": params.get("min_dist"),
            "trustworthiness": _finite(quality.get("trustworthiness")), "label_agreement": _finite(quality.get("label_agreement_map"))}


def _finite(value):
    """A measured number, or None where it was not measured (too few points gives NaN)."""
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def _score_facts(entry: dict) -> dict:
    params = entry.get("params", {})
    facts = {"method": params.get("method"), "images": (entry.get("counts") or {}).get("scored"), "time": entry.get("time"),
             "model": params.get("model")}
    for key in ("levels", "steps", "draws", "terms"):
        if key in params:
            facts[key] = params[key]
    return facts


def _column_facts(values: pd.Series) -> dict:
    known = values.dropna()
    facts = {"values": len(known)}
    if is_tag(known) and len(known):
        facts.update(kind="tag", marked=int(known.astype(bool).sum()))
    elif pd.api.types.is_numeric_dtype(known):
        facts.update(kind="number", min=float(known.min()) if len(known) else None,
                     max=float(known.max()) if len(known) else None)
    else:
        distinct = known.astype(str).nunique()
        facts.update(kind="category" if distinct <= TEXT_VALUES else "text", distinct=int(distinct))
    return facts


def _folder_bytes(root: Path) -> int:
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def _latents_note(latents: dict) -> str:
    notes = (["drawn from the posterior (encode --sample)"] if latents["sample"] else []) + (
        [f"refined by {latents['refine']} steps per image (encode --refine)"] if latents["refine"] else [])
    return "; latents " + " and ".join(notes) if notes else ""


def info_lines(facts: dict) -> list[str]:
    model, images = facts["model"], facts["images"]
    lines = [
        f"scope {facts['scope']} ({facts['size_mb']} MB), created {facts['created']}",
        f"model {model['class']} {model['reference']}: images {_size(model['image_size'])} (height x width) -> latents "
        f"{_size(model['latent_shape'])}" + _latents_note(facts["latents"]),
        f"images {images['encoded']:,} encoded of {images['files']:,} files in {facts['images_root']}"
        + (f"; {images['labels']} labels" if images["labels"] else "; no labels"),
    ]
    if images["failed"]:
        reasons = "; ".join(f"{count} x {reason}" for reason, count in images["failure_reasons"].items())
        lines.append(f"  {images['failed']:,} skipped: {reasons}")
    lines.append(f"maps ({len(facts['maps'])}):" if facts["maps"] else "maps: none yet (latentscope project)")
    for name, m in facts["maps"].items():
        quality = f", trustworthiness {m['trustworthiness']:.3f}" if m["trustworthiness"] is not None else ""
        if m["label_agreement"] is not None:
            quality += f", kNN label agreement {m['label_agreement']:.3f}"
        lines.append(f"  {name}: {m['points']:,} points in {m['dims']}-D (n_neighbors {m['n_neighbors']}, "
                     f"min_dist {m['min_dist']}){quality}; {m['time']}")
    lines.append(f"scores ({len(facts['scores'])}):" if facts["scores"] else "scores: none yet (latentscope score)")
    for name, s in facts["scores"].items():
        extra = ", ".join(f"{k} {_short(v)}" for k, v in s.items() if k in ("levels", "steps", "draws", "terms"))
        lines.append(f"  {name}: {s['method']} on {s['images'] or 0:,} images" + (f" ({extra})" if extra else "")
                     + f"; {s['time']}")
    count = len(facts["metadata"])
    lines.append(f"metadata ({count} column{'s' if count > 1 else ''}):" if facts["metadata"] else
                 "metadata: none (latentscope annotate, or tags made in the explorer)")
    for name, c in facts["metadata"].items():
        lines.append(f"  {name}: {_column_line(c)}")
    return lines


def _column_line(c: dict) -> str:
    if c["kind"] == "tag":
        return f"tag, {c['marked']:,} of {c['values']:,} images marked"
    if c["kind"] == "number":
        return f"number, {c['values']:,} values from {c['min']:.4g} to {c['max']:.4g}" if c["values"] else "number, no values"
    return f"{c['kind']}, {c['values']:,} values, {c['distinct']:,} distinct"


def _size(size) -> str:
    return " x ".join(map(str, size)) if size else "?"


def _short(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)

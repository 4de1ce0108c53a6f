"""How well a scope's stored scores find the images the user knows are anomalous.

The truth comes from the scope's own labels and metadata (``latentscope annotate``, or a tag made in the
explorer): ``COLUMN`` names a true/false column, ``COLUMN=VALUE`` the images holding that value
(``label=VALUE`` for labels). Images without a value in the column are left out of the measurement.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import InputError
from ..metadata import column_values, is_tag, matches_value
from ..scope import Scope
from .metrics import image_metrics


def truth_labels(scope: Scope | str, spec: str) -> pd.Series:
    """By image id: True for the images ``spec`` marks as anomalous, False for the others with a value."""
    scope = scope if isinstance(scope, Scope) else Scope(scope)
    column, equals, value = str(spec).partition("=")
    column = column.strip()
    values = column_values(scope, column, f"truth {spec!r}")
    known = values[values.notna()]
    if equals:
        truth = pd.Series(matches_value(known, value.strip()), index=known.index)
    elif is_tag(known):
        truth = known.astype(bool)
    else:
        seen = ", ".join(sorted(known.astype(str).unique())[:10])
        raise InputError(f"truth {spec!r}: {column!r} is not a true/false column; write {column}=VALUE (values: {seen})")
    if truth.all() or not truth.any():
        raise InputError(f"truth {spec!r}: {int(truth.sum())} of {len(truth)} images are anomalous by it; "
                         "measuring needs both anomalous and normal images")
    return truth


def evaluate_stored(scope: Scope | str, spec: str, names=None) -> pd.DataFrame:
    """One row per stored score: method, images, anomalous, AUROC, AUPR, F1-max, and the share of true
    anomalies among its N highest scores (N = the number of true anomalies)."""
    scope = scope if isinstance(scope, Scope) else Scope(scope)
    truth = truth_labels(scope, spec)
    entries = scope.meta.get("scores", {})
    rows = []
    for name in names or scope.table_names("scores"):
        scores = scope.read_scores(name).set_index("id")["score"].astype(np.float64)
        scores = scores[np.isfinite(scores)]
        common = truth.index.intersection(scores.index)
        labels, values = truth.loc[common].to_numpy(bool), scores.loc[common].to_numpy()
        if labels.all() or not labels.any():
            continue  # this score covers only one kind of image
        top = np.argsort(-values, kind="stable")[: int(labels.sum())]
        rows.append({"score": name, "method": entries.get(name, {}).get("params", {}).get("method", ""),
                     "images": len(common), "anomalous": int(labels.sum()), **image_metrics(labels, values),
                     "top_precision": float(labels[top].mean())})
    return pd.DataFrame(rows)


def truth_lines(table: pd.DataFrame, spec: str) -> list[str]:
    if table.empty:
        return [f"against {spec}: no stored score covers both anomalous and normal images"]
    lines = [f"against {spec} (AUROC, AUPR, F1-max, and how many of the top N are anomalous, N = anomalous images):"]
    width = max(len(f"{r.score} ({r.method})") for r in table.itertuples())
    for row in table.sort_values("auroc", ascending=False).itertuples():
        lines.append(f"  {f'{row.score} ({row.method})':<{width}}  {row.images:,} images, {row.anomalous:,} anomalous: "
                     f"AUROC {row.auroc:.3f}  AUPR {row.aupr:.3f}  F1-max {row.f1_max:.3f}  "
                     f"top {row.anomalous:,}: {row.top_precision:.0%} anomalous")
    return lines

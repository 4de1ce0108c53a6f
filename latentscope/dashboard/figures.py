"""The map figure: WebGL scatter traces with binary float32 arrays, plus overlay traces updated by Patch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .data import MAX_CATEGORIES, ExplorerData

PALETTE = [
    "#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#EECA3B", "#B279A2", "#FF9DA6",
    "#9D755D", "#BAB0AC", "#2E5A87", "#C85200", "#3B7D33", "#A3262A", "#3E8A85", "#B8961B",
    "#7D4F74", "#D46B78", "#6E4E3B", "#7F7772", "#88B3DA", "#FFBF79", "#8CD17D", "#FF9F9B",
]
NEUTRAL = "#6B7A8F"
OVERLAYS = ("highlight", "path", "waypoints", "focus", "frame")
SCORE_SCALE = [[0.0, "#2B3A55"], [0.5, "#8A6FB0"], [0.8, "#F2A65A"], [1.0, "#FFE46B"]]


def _base_trace(xy: np.ndarray, ids: np.ndarray, name: str, size: float, opacity: float, color, **marker) -> go.Scattergl:
    return go.Scattergl(
        x=xy[:, 0],
        y=xy[:, 1],
        customdata=ids,
        mode="markers",
        name=name,
        hoverinfo="none",
        marker=dict(size=size, opacity=opacity, color=color, line=dict(width=0), **marker),
    )


def _categories(values: pd.Series) -> pd.Series:
    values = values.astype(str).replace("", "(none)")
    top = values.value_counts().index[: MAX_CATEGORIES - 1]
    return values.where(values.isin(top), "other")


def base_traces(data: ExplorerData, colour: str, size: float, opacity: float) -> list[go.Scattergl]:
    points = data.points
    xy = points[["x", "y"]].to_numpy(np.float32)
    ids = points["id"].to_numpy(np.int32)
    if colour == "none" or colour not in {o["value"] for o in data.colour_options()}:
        return [_base_trace(xy, ids, "images", size, opacity, NEUTRAL)]
    if data.is_categorical(colour):
        values = _categories(data.column(colour))
        order = sorted(values.unique(), key=_natural_key)
        traces = []
        for index, category in enumerate(order):
            mask = (values == category).to_numpy()
            traces.append(_base_trace(xy[mask], ids[mask], str(category), size, opacity, PALETTE[index % len(PALETTE)]))
        return traces
    values = data.column(colour).to_numpy(np.float32)
    finite = np.isfinite(values)
    low, high = (np.nanpercentile(values[finite], [1, 99]) if finite.any() else (0.0, 1.0))
    title = colour.replace("score:", "score ") if colour.startswith("score:") else colour
    order = np.argsort(np.where(finite, values, -np.inf), kind="stable")  # high values drawn on top
    return [
        _base_trace(
            xy[order], ids[order], title, size, opacity, np.nan_to_num(values[order], nan=float(low)),
            colorscale=SCORE_SCALE if colour.startswith("score:") else "Viridis",
            cmin=float(low), cmax=float(high if high > low else low + 1e-6), showscale=True,
            colorbar=dict(title=dict(text=title, side="right"), thickness=12, len=0.6, outlinewidth=0),
        )
    ]


def _natural_key(value: str):
    return (0, int(value)) if str(value).lstrip("-").isdigit() else (1, str(value))


def overlay_traces() -> list[go.Scattergl]:
    """Empty traces drawn over the points; filled by Patch. Their points carry ids like the base traces."""
    empty = np.zeros(0, np.float32)
    styles = {
        "highlight": dict(mode="markers", marker=dict(size=11, color="rgba(0,0,0,0)", line=dict(width=2, color="#E4572E"))),
        "path": dict(mode="lines+markers", line=dict(width=2.5, color="#111827"), marker=dict(size=5, color="#111827")),
        "waypoints": dict(mode="markers+text", marker=dict(size=15, color="#FFFFFF", line=dict(width=3, color="#111827")),
                          textposition="top center", textfont=dict(size=13, color="#111827")),
        "focus": dict(mode="markers", marker=dict(size=18, color="rgba(0,0,0,0)", line=dict(width=3, color="#E4572E"))),
        "frame": dict(mode="markers", marker=dict(size=13, color="#E4572E", line=dict(width=2, color="#FFFFFF"))),
    }
    return [go.Scattergl(x=empty, y=empty, name=name, hoverinfo="none", showlegend=False, **styles[name]) for name in OVERLAYS]


def map_figure(data: ExplorerData, colour: str, size: float = 5, opacity: float = 0.8) -> go.Figure:
    """The full map: base traces (one per category, or one with a colour scale) then the overlays."""
    figure = go.Figure(base_traces(data, colour, size, opacity) + overlay_traces())
    axis = dict(showgrid=False, zeroline=False, showticklabels=False, title=None, showline=False)
    figure.update_layout(
        margin=dict(l=8, r=8, t=8, b=8),
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="#FBFBFD",
        xaxis=axis,
        yaxis={**axis, "scaleanchor": "x", "scaleratio": 1},
        dragmode="pan",
        hovermode="closest",
        uirevision="map",
        legend=dict(orientation="v", x=0.005, xanchor="left", y=0.995, yanchor="top", bgcolor="rgba(255,255,255,0.85)",
                    itemsizing="constant", font=dict(size=12), borderwidth=0),
        font=dict(family="Inter, system-ui, -apple-system, Segoe UI, sans-serif", color="#1F2937"),
    )
    return figure


def overlay_index(n_base: int, name: str) -> int:
    return n_base + OVERLAYS.index(name)

"""The map figure: WebGL scatter traces with binary float32 arrays, plus overlay traces updated by Patch.

A map of more than ``data.density_threshold`` points is drawn as a density image (datashader, or a plain
2-D histogram without it) of the current view, plus the points of that view once it holds at most
``data.zoom_points``: the same traces, so colours, hover, clicks and overlays work as usual when zoomed in.
"""

from __future__ import annotations

import base64
import io

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
OVERLAYS = ("highlight",)  # the other marks are drawn over the map by assets/latentscope.js
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


def _colour_kind(data: ExplorerData, colour: str) -> str:
    if colour == "none" or colour not in {o["value"] for o in data.colour_options()}:
        return "none"
    return "categorical" if data.is_categorical(colour) else "numeric"


def base_traces(data: ExplorerData, colour: str, size: float, opacity: float, rows: np.ndarray | None = None) -> list[go.Scattergl]:
    """The point traces; ``rows`` draws only those points (categories and colour range still come from all)."""
    points = data.points
    xy = points[["x", "y"]].to_numpy(np.float32)
    ids = points["id"].to_numpy(np.int32)
    keep = np.ones(len(points), bool)
    if rows is not None:
        keep[:] = False
        keep[rows] = True
    kind = _colour_kind(data, colour)
    if kind == "none":
        return [_base_trace(xy[keep], ids[keep], "images", size, opacity, NEUTRAL)]
    if kind == "categorical":
        values = _categories(data.column(colour))
        order = sorted(values.unique(), key=_natural_key)
        traces = []
        for index, category in enumerate(order):
            mask = (values == category).to_numpy() & keep
            traces.append(_base_trace(xy[mask], ids[mask], str(category), size, opacity, PALETTE[index % len(PALETTE)]))
        return traces
    low, high, values = _colour_range(data, colour)
    finite = np.isfinite(values)
    xy, ids, values, finite = xy[keep], ids[keep], values[keep], finite[keep]
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


def _colour_range(data: ExplorerData, colour: str) -> tuple[float, float, np.ndarray]:
    values = data.column(colour).to_numpy(np.float32)
    finite = np.isfinite(values)
    low, high = (np.nanpercentile(values[finite], [1, 99]) if finite.any() else (0.0, 1.0))
    return float(low), float(high), values


def _natural_key(value: str):
    return (0, int(value)) if str(value).lstrip("-").isdigit() else (1, str(value))


def overlay_traces() -> list[go.Scattergl]:
    """Empty traces drawn over the points; filled by Patch. Their points carry ids like the base traces."""
    empty = np.zeros(0, np.float32)
    styles = {
        "highlight": dict(mode="markers", marker=dict(size=11, color="rgba(0,0,0,0)", line=dict(width=2, color="#E4572E"))),
    }
    return [go.Scattergl(x=empty, y=empty, name=name, hoverinfo="none", showlegend=False, **styles[name]) for name in OVERLAYS]


def map_figure(data: ExplorerData, colour: str, size: float = 5, opacity: float = 0.8, view=None) -> go.Figure:
    """The full map: base traces (one per category, or one with a colour scale) then the overlays.

    For a dense map, a density image of ``view`` ([x0, x1, y0, y1], None: everything) lies under the
    traces, which hold the points in view when there are at most ``data.zoom_points`` of them.
    """
    rows = None
    if data.dense:
        rows = data.rows_in_view(view)
        if len(rows) > data.zoom_points:
            rows = rows[:0]
    figure = go.Figure(base_traces(data, colour, size, opacity, rows) + overlay_traces())
    if data.dense:
        figure.add_layout_image(density_image(data, colour, view))
    axis = dict(showgrid=False, zeroline=False, showticklabels=False, title=None, showline=False)
    figure.update_layout(
        margin=dict(l=8, r=8, t=8, b=8),
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="#FBFBFD",
        xaxis=axis,
        yaxis={**axis, "scaleanchor": "x", "scaleratio": 1},
        dragmode="pan",
        hovermode="closest",
        uirevision=f"map:{data.map_name}",  # the view (zoom, pan) is kept while the map stays the same
        legend=dict(orientation="v", x=0.005, xanchor="left", y=0.995, yanchor="top", bgcolor="rgba(255,255,255,0.85)",
                    itemsizing="constant", font=dict(size=12), borderwidth=0),
        font=dict(family="Inter, system-ui, -apple-system, Segoe UI, sans-serif", color="#1F2937"),
    )
    return figure


def overlay_index(n_base: int, name: str) -> int:
    return n_base + OVERLAYS.index(name)


# ---------------------------------------------------------------------- density image of a dense map

DENSITY_WIDTH = 1000  # pixels across; the height follows the view's aspect ratio
DENSITY_LOW = (214, 222, 235)  # colour ramp of the count image: light for few points, dark for many
DENSITY_HIGH = (20, 35, 70)


def view_bounds(data: ExplorerData, view) -> tuple[float, float, float, float]:
    """[x0, x1, y0, y1] of the view, or of all points (padded by 2 %) when None."""
    if view is not None:
        x0, x1, y0, y1 = (float(v) for v in view)
        return min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
    xy = data.points[["x", "y"]].to_numpy(np.float64)
    (x0, y0), (x1, y1) = xy.min(0), xy.max(0)
    pad_x, pad_y = 0.02 * max(x1 - x0, 1e-9), 0.02 * max(y1 - y0, 1e-9)
    return x0 - pad_x, x1 + pad_x, y0 - pad_y, y1 + pad_y


def density_image(data: ExplorerData, colour: str, view=None) -> dict:
    """A plotly layout image (PNG data URI) of how many points fall on each pixel of the view."""
    x0, x1, y0, y1 = view_bounds(data, view)
    width = DENSITY_WIDTH
    height = int(np.clip(round(width * (y1 - y0) / max(x1 - x0, 1e-12)), 100, 2 * DENSITY_WIDTH))
    try:
        rgba = _datashader_rgba(data, colour, (x0, x1, y0, y1), width, height)
    except ImportError:
        rgba = _histogram_rgba(data, (x0, x1, y0, y1), width, height)
    out = io.BytesIO()
    from PIL import Image

    Image.fromarray(rgba, "RGBA").save(out, format="PNG")
    source = "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()
    return dict(source=source, xref="x", yref="y", x=x0, y=y1, sizex=x1 - x0, sizey=y1 - y0, sizing="stretch",
                xanchor="left", yanchor="top", layer="below", name="density")


def _datashader_rgba(data: ExplorerData, colour: str, bounds, width: int, height: int) -> np.ndarray:
    """Top row = highest y. Categories are shaded in the legend's colours, numbers by their mean, else counts."""
    import datashader as ds
    import datashader.transfer_functions as tf

    x0, x1, y0, y1 = bounds
    canvas = ds.Canvas(plot_width=width, plot_height=height, x_range=(x0, x1), y_range=(y0, y1))
    frame = pd.DataFrame({"x": data.points["x"].to_numpy(np.float32), "y": data.points["y"].to_numpy(np.float32)})
    kind = _colour_kind(data, colour)
    if kind == "categorical":
        values = _categories(data.column(colour))
        order = sorted(values.unique(), key=_natural_key)
        frame["c"] = pd.Categorical(values.to_numpy(), categories=order)
        agg = canvas.points(frame, "x", "y", ds.by("c", ds.count()))
        image = tf.shade(agg, color_key={c: PALETTE[i % len(PALETTE)] for i, c in enumerate(order)}, how="eq_hist", min_alpha=60)
    elif kind == "numeric":
        low, high, values = _colour_range(data, colour)
        frame["v"] = np.clip(values, low, high)
        agg = canvas.points(frame, "x", "y", ds.mean("v"))
        scale = [c for _, c in SCORE_SCALE] if colour.startswith("score:") else ["#440154", "#31688E", "#35B779", "#FDE725"]
        image = tf.shade(agg, cmap=scale, how="linear", span=(low, high if high > low else low + 1e-6))
    else:
        agg = canvas.points(frame, "x", "y", ds.count())
        image = tf.shade(agg, cmap=[_hex(DENSITY_LOW), _hex(DENSITY_HIGH)], how="eq_hist")
    image = tf.dynspread(image, threshold=0.5, max_px=3)  # isolated points grow to stay visible
    return np.asarray(image.to_pil().convert("RGBA"))


def _histogram_rgba(data: ExplorerData, bounds, width: int, height: int) -> np.ndarray:
    """Without datashader: a 2-D histogram of the counts on a log scale (top row = highest y)."""
    x0, x1, y0, y1 = bounds
    counts, _, _ = np.histogram2d(data.points["y"].to_numpy(np.float64), data.points["x"].to_numpy(np.float64),
                                  bins=(height, width), range=((y0, y1), (x0, x1)))
    counts = counts[::-1]
    level = np.log1p(counts) / max(np.log1p(counts.max()), 1e-12)
    low, high = np.array(DENSITY_LOW, np.float64), np.array(DENSITY_HIGH, np.float64)
    rgba = np.zeros((height, width, 4), np.uint8)
    rgba[..., :3] = (low + (high - low) * level[..., None]).round().astype(np.uint8)
    rgba[..., 3] = np.where(counts > 0, 255, 0)
    return rgba


def _hex(rgb) -> str:
    return "#" + "".join(f"{int(v):02x}" for v in rgb)

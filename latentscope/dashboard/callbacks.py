"""Callbacks: each body is a method of :class:`Callbacks` (testable without a browser); ``register`` wires them.

Large figure updates use ``Patch`` so the 100,000-point traces are sent once;
hover is a clientside callback (no server round trip: the thumbnail is a plain
image request).
"""

from __future__ import annotations

import functools
import math
import threading

import numpy as np
import pandas as pd
from dash import ALL, Input, Output, Patch, State, ctx, dcc, html, no_update
from dash.exceptions import PreventUpdate

from ..errors import LatentscopeError
from . import actions
from .data import ExplorerData
from .figures import OVERLAYS, map_figure, overlay_index
from .jobs import JobManager
from .layout import anomaly_columns, anomaly_rows, facts_text

MAX_WAYPOINTS = 8
QUICK_SECONDS = 1.0  # a walk done within this is shown at once; a longer one shows progress, polled
GALLERY_LIMIT = 60
HIGHLIGHT_LIMIT = 20_000
FACT_CHARACTERS = 300  # a long caption or note is cut in the facts table


def _clicked_id(clicked) -> int | None:
    """The id from the clientside click translation ``{"id": ..., "at": ...}``."""
    try:
        return int(clicked["id"])
    except (TypeError, KeyError, ValueError):
        return None


def _is_blank(value) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _shortened(text: str, limit: int = FACT_CHARACTERS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def thumb_url(image_id: int) -> str:
    return f"thumb/{int(image_id)}.jpg"  # relative, so the app also works under a path prefix


class Callbacks:
    """The server-side behaviour of the page."""

    def __init__(self, data: ExplorerData, jobs: JobManager, heatmaps=None, family: dict | None = None):
        self.data = data
        self.jobs = jobs
        self.heatmaps = heatmaps  # image id -> PNG bytes of the anomaly heatmap overlay, when scoring is available
        self.quick_seconds = QUICK_SECONDS
        self._family = family if family is not None else {"lock": threading.Lock(), "maps": {data.map_name: self}}

    def for_map(self, map_name) -> "Callbacks":
        """The callbacks of another map of the scope (each page shows the map it chose; the server keeps one
        set per map, sharing models and jobs). An unknown name gives this map's."""
        maps = self._family["maps"]
        if map_name in maps:
            return maps[map_name]
        if map_name not in self.data.map_names:
            return self
        with self._family["lock"]:
            if map_name not in maps:
                maps[map_name] = Callbacks(self.data.for_map(map_name), self.jobs, self.heatmaps, self._family)
            return maps[map_name]

    def reload(self, heatmaps) -> None:
        """After the scope was read again: the other maps' callbacks are made afresh when next asked for."""
        with self._family["lock"]:
            self.heatmaps = heatmaps
            self._family["maps"].clear()
            self._family["maps"][self.data.map_name] = self

    def show_map(self, map_name, colour, size, opacity, threshold, focus_id, walk_ids):
        """Switch the page to another map: its points, the marks at their places there, no walk path."""
        other = self.for_map(map_name)
        figure, n_base = other.redraw(colour, size, opacity, threshold)
        focus = other.marks([focus_id] if focus_id is not None else [])
        return other.data.map_name, figure, n_base, facts_text(other.data), focus, other.marks(walk_ids), None, None

    # ------------------------------------------------------------------ map

    def redraw(self, colour, size, opacity, threshold, view=None):
        """A full redraw when the colouring changes, with the highlight ring carried over. (The other marks, such
        as the walk's path, are not in the figure: the page draws them over the map, see assets/latentscope.js.)"""
        figure = map_figure(self.data, colour or "none", size or 5, opacity or 0.8, view)
        n_base = len(figure.data) - len(OVERLAYS)
        trace, ids = figure.data[overlay_index(n_base, "highlight")], self.ids_above(threshold)
        xy = self._xy(ids)
        trace.x, trace.y, trace.customdata = xy[:, 0], xy[:, 1], self._known(ids)
        return figure, n_base

    def redraw_view(self, view, colour, size, opacity, threshold):
        """Dense maps only: the density image of the new view, and its points once few enough are in it."""
        if not self.data.dense:
            raise PreventUpdate
        return self.redraw(colour, size, opacity, threshold, view)

    def marks(self, ids) -> list[list[float]]:
        """[x, y, id] of each known id, for the marks the page draws over the map (focus ring, waypoints)."""
        known = self._known(ids)
        return [[float(x), float(y), image_id] for (x, y), image_id in zip(self._xy(known).tolist(), known)]

    def _known(self, ids) -> list[int]:
        return [int(i) for i in ids or [] if self.data.knows(i)]

    def _xy(self, ids) -> np.ndarray:
        rows = self.data.ids_to_rows(ids or [])
        return self.data.points[["x", "y"]].to_numpy(np.float32)[rows] if len(rows) else np.zeros((0, 2), np.float32)

    def restyle(self, size, opacity, n_base):
        """Point size and opacity change without resending the points."""
        patch = Patch()
        for i in range(int(n_base or 1)):
            patch["data"][i]["marker"]["size"] = size
            patch["data"][i]["marker"]["opacity"] = opacity
        return patch

    def overlay_patch(self, n_base, name: str, ids) -> Patch:
        xy = self._xy(ids)
        patch = Patch()
        index = overlay_index(int(n_base), name)
        patch["data"][index]["x"] = xy[:, 0].tolist()
        patch["data"][index]["y"] = xy[:, 1].tolist()
        patch["data"][index]["customdata"] = self._known(ids)
        return patch

    # ------------------------------------------------------------------ clicks and inspect

    def click(self, click_data, tab, walk_ids):
        image_id = _clicked_id(click_data)
        if image_id is None or not self.data.knows(image_id):
            raise PreventUpdate
        walk_ids = list(walk_ids or [])
        if tab == "walk" and len(walk_ids) < MAX_WAYPOINTS and (not walk_ids or walk_ids[-1] != image_id):
            walk_ids.append(image_id)
            return image_id, walk_ids
        return image_id, no_update

    def inspect(self, image_id, tab):
        return self.inspect_panel(image_id), tab if tab in ("walk", "anomalies", "select") else "inspect"

    def focus_marks(self, image_id):
        return self.marks([image_id] if image_id is not None else [])

    def waypoints(self, ids):
        return self.walk_chips(ids), self.marks(ids)

    def neighbour_click(self, clicks):
        if not ctx.triggered_id or not any(clicks or []):
            raise PreventUpdate
        return int(ctx.triggered_id["id"])

    def inspect_panel(self, image_id):
        if image_id is None or not self.data.knows(image_id):
            raise PreventUpdate
        point = self.data.point(image_id)
        facts = [("id", point["id"]), ("file", point["path"]), ("size", f"{point['width']} x {point['height']}")]
        if point.get("label"):
            facts.insert(1, ("label", point["label"]))
        for column in (c for c in self.data.points.columns if c.startswith("score:")):
            value = point.get(column)
            if value is not None and np.isfinite(value):
                rank = int((self.data.points[column] > value).sum()) + 1
                facts.append((column.replace("score:", "score "), f"{value:.3f}  (rank {rank:,} of {len(self.data.points):,})"))
                terms = self.data.score_terms(column, image_id)
                if terms:  # which kind of oddness drives the score: a local defect, unusual content, unusual tone
                    facts.append(("terms (z vs normal)", terms))
        for column in self.data.metadata_columns:
            value = point.get(column)
            if not _is_blank(value):
                facts.append((column, _shortened(str(value))))
        images = [
            _figure_block("original", f"image/{image_id}.png"),
            _figure_block("decoded", f"recon/{image_id}.png"),
        ]
        if self.heatmaps is not None and self.data.default_score_column:
            images.append(_figure_block("anomaly heatmap", f"heatmap/{image_id}.png"))
        neighbours = self.data.neighbours(image_id, k=8)
        return [
            html.Div(images, className="inspect-images"),
            html.Table([html.Tr([html.Th(k), html.Td(str(v))]) for k, v in facts], className="facts-table"),
            html.H4("Nearest neighbours"),
            html.Div(
                [thumb_button(n, "neighbours") for n in neighbours],
                className="gallery",
            ),
        ]

    # ------------------------------------------------------------------ walk points

    def walk_chips(self, walk_ids):
        if not walk_ids:
            return html.Span("No points yet.", className="hint")
        chips = []
        for index, image_id in enumerate(walk_ids):
            chips.append(html.Div([html.Span(str(index + 1), className="chip-number"), html.Img(src=thumb_url(image_id)),
                                   html.Span(f"id {image_id}")], className="chip"))
            if index + 1 < len(walk_ids):
                chips.append(html.Span("→", className="chip-arrow"))
        return chips

    def clear_walk(self, n_clicks):
        if not n_clicks:
            raise PreventUpdate
        return [], None

    # ------------------------------------------------------------------ selection

    def selection(self, selected_ids):
        """Keep known ids; show the Select tab when something was selected."""
        ids = [int(i) for i in dict.fromkeys(selected_ids or []) if self.data.knows(i)]
        return ids, ("select" if ids else no_update)

    def gallery(self, ids):
        ids = ids or []
        count = f"{len(ids):,} selected" if ids else "Nothing selected."
        shown = ids[:GALLERY_LIMIT]
        tiles = [thumb_button(i, "gallery") for i in shown]
        if len(ids) > GALLERY_LIMIT:
            tiles.append(html.Div(f"+{len(ids) - GALLERY_LIMIT:,} more", className="more"))
        return count, tiles

    def set_group(self, clicks_a, clicks_b, selection, group_a, group_b):
        if ctx.triggered_id == "set-group-a" and clicks_a:
            group_a = list(selection or [])
        elif ctx.triggered_id == "set-group-b" and clicks_b:
            group_b = list(selection or [])
        else:
            raise PreventUpdate
        summary = f"group A: {len(group_a or []):,} images · group B: {len(group_b or []):,} images"
        return group_a, group_b, summary, summary

    def tag_selection(self, add_clicks, remove_clicks, name, ids, colour):
        """Tag or untag the selection; the colour choices gain the tag, and a map coloured by it is redrawn."""
        if ctx.triggered_id not in ("tag-add", "tag-remove") or not (add_clicks or remove_clicks):
            raise PreventUpdate
        if not ids:
            return "Select images on the map first.", no_update, no_update
        return self._tag(name, ids, ctx.triggered_id == "tag-add", colour)

    def tag_inspected(self, add_clicks, remove_clicks, name, image_id, colour):
        """Tag or untag the inspected image (reviewing anomalies one by one); its facts show the tag at once."""
        if ctx.triggered_id not in ("inspect-tag-add", "inspect-tag-remove") or not (add_clicks or remove_clicks):
            raise PreventUpdate
        if image_id is None or not self.data.knows(image_id):
            return "Click a point on the map first.", no_update, no_update, no_update
        summary, options, colour = self._tag(name, [int(image_id)], ctx.triggered_id == "inspect-tag-add", colour)
        return summary, options, colour, (self.inspect_panel(image_id) if options is not no_update else no_update)

    def _tag(self, name, ids, adding: bool, colour):
        try:
            tagged = self.data.tag(name, ids, value=adding)
        except LatentscopeError as exc:
            return _error(str(exc)), no_update, no_update
        with self._family["lock"]:
            for other in self._family["maps"].values():
                if other is not self:
                    other.data.reload_points()  # the other maps' points carry the tag too
        name = str(name).strip()
        what = f"{len(ids):,} images" if len(ids) > 1 else f"image {ids[0]}"
        done = f"{'tagged' if adding else 'untagged'} {what} · {tagged:,} carry {name!r} · saved in the scope"
        return done, self.data.colour_options(), (colour if colour == name else no_update)

    def anomaly_table(self, *_):
        """The anomaly table's columns and rows again (after a tag changed)."""
        score = self.data.default_score_column
        return anomaly_columns(self.data, score), (anomaly_rows(self.data, score) if score else [])

    def find(self, text, threshold, n_base):
        """Images matching the text become the selection and are ringed on the map (an empty text clears both,
        and the ring goes back to the anomaly threshold's)."""
        if not (text or "").strip():
            return [], "", self.overlay_patch(n_base, "highlight", self.ids_above(threshold))
        ids = self.data.find(text).tolist()
        if not ids:
            return [], f"nothing matches {text.strip()!r}", no_update
        ringed = ids[:HIGHLIGHT_LIMIT]
        shown = f"{len(ids):,} images match {text.strip()!r}" + (f" (the first {HIGHLIGHT_LIMIT:,} are ringed)" if len(ids) > len(ringed) else "")
        return ids, shown, self.overlay_patch(n_base, "highlight", ringed)

    def download_selection(self, clicks, ids):
        if not clicks or not ids:
            raise PreventUpdate
        return dcc.send_data_frame(self.data.table_for(ids).to_csv, "selection.csv", index=False)

    # ------------------------------------------------------------------ anomalies

    def ids_above(self, threshold) -> list[int]:
        """Ids scoring at or above the threshold, highest first, at most HIGHLIGHT_LIMIT."""
        score = self.data.default_score_column
        if score is None or threshold is None:
            return []
        values = self.data.points[score].to_numpy()
        above = np.flatnonzero(values >= threshold)
        return self.data.points["id"].to_numpy()[above[np.argsort(-values[above])][:HIGHLIGHT_LIMIT]].tolist()

    def highlight_above(self, threshold, n_base):
        score = self.data.default_score_column
        if score is None or threshold is None:
            raise PreventUpdate
        count = int((self.data.points[score].to_numpy() >= threshold).sum())
        shown = f"{count:,} images score at or above {threshold:.3f}"
        if count > HIGHLIGHT_LIMIT:
            shown += f" (the top {HIGHLIGHT_LIMIT:,} are ringed)"
        return self.overlay_patch(n_base, "highlight", self.ids_above(threshold)), shown

    def table_focus(self, active_cell, rows):
        if not active_cell or rows is None:
            raise PreventUpdate
        row_id = active_cell.get("row_id")
        if row_id is not None:
            return int(row_id)
        index = active_cell.get("row")
        if index is None or index >= len(rows):
            raise PreventUpdate
        return int(rows[index]["id"])

    def table_rows(self, score):
        return anomaly_rows(self.data, score)

    # ------------------------------------------------------------------ long work: walks and mosaics

    def start_walk(self, n_clicks, ids, method, steps, options):
        if not n_clicks:
            raise PreventUpdate
        try:
            spec = actions.walk_spec(ids or [], method, steps or 24, options)
        except LatentscopeError as exc:
            return no_update, True, _error(str(exc)), no_update
        return self._walk_started(self.jobs.submit("walk", actions.run_walk, self.data, spec))

    def _walk_started(self, job):
        """(walk-job, poll disabled, progress, walk-result): a quick walk's result at once, saving the polls;
        otherwise the job for the poll to follow. Polling and progress are left as they are for a quick walk,
        as a mosaic may be running too."""
        if job.wait(self.quick_seconds) and job.state == "done":
            return None, no_update, no_update, job.result.summary(job.id)
        return {"id": job.id}, False, _progress(job.status()), no_update

    def start_direction(self, n_clicks, focus_id, group_a, group_b, strength, method, steps):
        if not n_clicks:
            raise PreventUpdate
        if focus_id is None:
            return no_update, True, _error("inspect an image first (click it on the map): it is the one that moves"), no_update
        if not group_a or not group_b:
            return no_update, True, _error("set group A and group B in the Select tab first"), no_update
        direction = {"from": {"ids": list(group_a)}, "to": {"ids": list(group_b)}, "strength": list(strength or [0, 1])}
        try:
            spec = actions.walk_spec([focus_id], "lerp" if method in ("noise-slerp", "data-path") else method, steps or 24,
                                     [], direction=direction)
        except LatentscopeError as exc:
            return no_update, True, _error(str(exc)), no_update
        return self._walk_started(self.jobs.submit("walk", actions.run_walk, self.data, spec))

    def start_mosaic(self, n_clicks, grid, view):
        if not n_clicks:
            raise PreventUpdate
        bounds = tuple(view) if view else self.data_bounds()
        job = self.jobs.submit("mosaic", actions.run_mosaic, self.data, bounds, int(grid or 8))
        return {"id": job.id}, False, _progress(job.status())

    def data_bounds(self) -> tuple[float, float, float, float]:
        xy = self.data.points[["x", "y"]].to_numpy(np.float64)
        (x0, y0), (x1, y1) = xy.min(0), xy.max(0)
        return float(x0), float(x1), float(y0), float(y1)

    def view_range(self, relayout, current):
        """The visible part of the map, from plotly's relayout events (None = everything)."""
        if not relayout:
            raise PreventUpdate
        if relayout.get("xaxis.autorange") or relayout.get("autosize"):
            return None
        keys = ("xaxis.range[0]", "xaxis.range[1]", "yaxis.range[0]", "yaxis.range[1]")
        if all(k in relayout for k in keys):
            return [float(relayout[k]) for k in keys]
        if "xaxis.range" in relayout and "yaxis.range" in relayout:
            return [*map(float, relayout["xaxis.range"]), *map(float, relayout["yaxis.range"])]
        raise PreventUpdate

    def poll(self, _ticks, walk_job, grid_job):
        """Report progress; hand over finished results; stop polling when nothing runs."""
        messages, running = [], False
        results = {"walk": no_update, "mosaic": no_update}
        cleared = {"walk": no_update, "mosaic": no_update}
        for kind, ref in (("walk", walk_job), ("mosaic", grid_job)):
            if not ref:
                continue
            job = self.jobs.get(ref.get("id"))
            if job is None:
                cleared[kind] = None
                continue
            status = job.status()
            if status["state"] in ("queued", "running"):
                running = True
                messages.append(_progress(status))
                continue
            cleared[kind] = None
            if status["state"] == "error":
                messages.append(_error(f"{kind} failed: {status['error']}"))
            elif kind == "walk":
                results["walk"] = job.result.summary(job.id)
            else:
                results["mosaic"] = _mosaic_view(job.id, job.result)
        return messages or None, results["walk"], results["mosaic"], not running, cleared["walk"], cleared["mosaic"]

    def walk_view(self, result):
        """Show a finished walk: animation, scrubbable frame, strip, downloads. (The page draws its path on the map.)"""
        if not result:
            return {"display": "none"}, no_update, no_update, [], 1, {}, 0, "", no_update, no_update, no_update, True
        job, frames = result["job"], int(result["frames"])
        base = f"jobs/{job}/"
        strip = [html.Img(src=f"{base}frame-{i}.png", title=f"frame {i + 1}", className="current" if i == 0 else "")
                 for i in range(frames)]
        step = max(1, frames // 12)
        marks = {i: str(i + 1) for i in range(0, frames, step)}
        return ({}, f"{base}frame-0.png", f"{base}frame-0.png", strip, frames - 1, marks, 0, result["text"],
                base + "download.gif", base + "download.mp4", base + "download-strip.png", False)


def _progress(status: dict) -> html.Div:
    fraction = status["done"] / max(1, status["total"])
    return html.Div(
        [html.Span(f"{status['kind']}: {status['message']}"),
         html.Div(html.Div(style={"width": f"{max(5, int(fraction * 100))}%"}), className="progress-bar")],
        className="job",
    )


def _error(message: str) -> html.Div:
    return html.Div(message, className="error")


def _mosaic_view(job_id: str, result) -> html.Div:
    x0, x1, y0, y1 = result.bounds
    return html.Div(
        [html.Img(src=f"jobs/{job_id}/mosaic.png", id="mosaic-img"),
         html.Div(f"{result.grid} x {result.grid} decoded from x {x0:.2f}..{x1:.2f}, y {y0:.2f}..{y1:.2f}", className="hint"),
         html.A("download PNG", href=f"jobs/{job_id}/download-mosaic.png", download="mosaic.png")]
    )


def thumb_button(image_id: int, where: str) -> html.Button:
    """A clickable thumbnail that inspects its image; ``where`` keeps ids unique across galleries."""
    return html.Button(html.Img(src=thumb_url(image_id), title=f"id {image_id}"),
                       id={"type": "thumb", "where": where, "id": int(image_id)}, className="thumb-button", n_clicks=0)


def _figure_block(caption: str, src: str) -> html.Figure:
    return html.Figure([html.Img(src=src, className="pixelated"), html.Figcaption(caption)], className="inspect-figure")


# Dash's Graph drops customdata sent as a binary array from event data, so the id of an event's point is read
# from plotly's decoded traces in the browser: latentscopePointId in assets/latentscope.js.
HOVER_JS = """
function(hover) {
    const keep = window.dash_clientside.no_update;
    const id = hover && hover.points && hover.points.length ? window.latentscopePointId(hover.points[0]) : null;
    if (id === null) { return [false, keep, keep]; }
    return [true, hover.points[0].bbox, 'thumb/' + id + '.jpg'];
}
"""

HOVER_INFO_JS = """
async function(hover, colour) {
    const id = hover && hover.points && hover.points.length ? window.latentscopePointId(hover.points[0]) : null;
    if (id === null) { return window.dash_clientside.no_update; }
    try {
        const response = await fetch('info/' + id + (colour ? '?colour=' + encodeURIComponent(colour) : ''));
        if (!response.ok) { return 'id ' + id; }
        return (await response.json()).text;
    } catch (error) {
        return 'id ' + id;
    }
}
"""

CLICK_JS = """
function(click) {
    const id = click && click.points && click.points.length ? window.latentscopePointId(click.points[0]) : null;
    return id === null ? window.dash_clientside.no_update : {id: id, at: Date.now()};
}
"""

SELECT_JS = """
function(selected) {
    if (!selected || !selected.points) { return []; }
    const seen = new Set();
    for (const point of selected.points) {
        const id = window.latentscopePointId(point);
        if (id !== null) { seen.add(id); }
    }
    return Array.from(seen);
}
"""


def register(app, callbacks: Callbacks) -> None:
    """Wire the page to the callbacks. Every server-side callback also gets the map the page shows (the last
    argument) and runs with that map's callbacks."""
    cb = callbacks
    MAP = State("map-current", "data")  # noqa: N806 (a constant of this function)

    def on_map(method):
        @functools.wraps(method)
        def call(*args):
            *args, map_name = args
            return getattr(callbacks.for_map(map_name), method.__name__)(*args)

        return call

    app.callback(
        Output("map-current", "data"), Output("map", "figure", allow_duplicate=True),
        Output("n-base", "data", allow_duplicate=True), Output("facts", "children"),
        Output("focus-xy", "data", allow_duplicate=True), Output("waypoint-xy", "data", allow_duplicate=True),
        Output("walk-result", "data", allow_duplicate=True), Output("view-range", "data", allow_duplicate=True),
        Input("map-name", "value"), State("colour-by", "value"), State("point-size", "value"),
        State("point-opacity", "value"), State("anomaly-threshold", "value"), State("focus-id", "data"),
        State("walk-ids", "data"), prevent_initial_call=True,
    )(cb.show_map)
    app.clientside_callback(
        HOVER_JS,
        Output("hover-tip", "show"), Output("hover-tip", "bbox"), Output("hover-img", "src"), Input("map", "hoverData"),
    )
    app.clientside_callback(HOVER_INFO_JS, Output("hover-text", "children"), Input("map", "hoverData"),
                            State("colour-by", "value"))
    app.clientside_callback(CLICK_JS, Output("clicked-point", "data"), Input("map", "clickData"), prevent_initial_call=True)
    app.clientside_callback(SELECT_JS, Output("selected-points", "data"), Input("map", "selectedData"), prevent_initial_call=True)
    app.callback(
        Output("map", "figure"), Output("n-base", "data"),
        Input("colour-by", "value"),
        State("point-size", "value"), State("point-opacity", "value"), State("anomaly-threshold", "value"),
        State("view-range", "data"),
        MAP, prevent_initial_call=True,
    )(on_map(cb.redraw))
    app.callback(
        Output("map", "figure", allow_duplicate=True), Output("n-base", "data", allow_duplicate=True),
        Input("view-range", "data"), State("colour-by", "value"),
        State("point-size", "value"), State("point-opacity", "value"), State("anomaly-threshold", "value"),
        MAP, prevent_initial_call=True,
    )(on_map(cb.redraw_view))
    app.callback(
        Output("map", "figure", allow_duplicate=True),
        Input("point-size", "value"), Input("point-opacity", "value"), State("n-base", "data"),
        MAP, prevent_initial_call=True,
    )(on_map(cb.restyle))
    app.callback(
        Output("focus-id", "data"), Output("walk-ids", "data"),
        Input("clicked-point", "data"), State("panel-tabs", "value"), State("walk-ids", "data"),
        MAP, prevent_initial_call=True,
    )(on_map(cb.click))
    app.callback(
        Output("focus-id", "data", allow_duplicate=True),
        Input({"type": "thumb", "where": ALL, "id": ALL}, "n_clicks"),
        MAP, prevent_initial_call=True,
    )(on_map(cb.neighbour_click))
    app.callback(Output("inspect-panel", "children"), Output("panel-tabs", "value"),
                 Input("focus-id", "data"), State("panel-tabs", "value"), MAP, prevent_initial_call=True)(on_map(cb.inspect))
    app.callback(Output("focus-xy", "data"), Input("focus-id", "data"), MAP, prevent_initial_call=True)(on_map(cb.focus_marks))
    app.callback(Output("walk-points", "children"), Output("waypoint-xy", "data"),
                 Input("walk-ids", "data"), MAP, prevent_initial_call=True)(on_map(cb.waypoints))
    app.clientside_callback(
        """
        function(focus, waypoints, result, frame) {
            const walkChanged = window.dash_clientside.callback_context.triggered.some(
                (t) => t.prop_id === 'walk-result.data');
            return window.latentscopeShowMarks({focus: focus || [], waypoints: waypoints || [],
                path: (result && result.path) || [], frame: walkChanged ? 0 : (frame || 0)});
        }
        """,
        Output("map-marks", "data"), Input("focus-xy", "data"), Input("waypoint-xy", "data"), Input("walk-result", "data"),
        Input("walk-frame", "value"),
    )
    app.callback(Output("walk-ids", "data", allow_duplicate=True), Output("walk-result", "data", allow_duplicate=True),
                 Input("walk-clear", "n_clicks"), MAP, prevent_initial_call=True)(on_map(cb.clear_walk))
    app.callback(Output("selection-ids", "data"), Output("panel-tabs", "value", allow_duplicate=True),
                 Input("selected-points", "data"), MAP, prevent_initial_call=True)(on_map(cb.selection))
    app.callback(Output("selection-count", "children"), Output("selection-gallery", "children"),
                 Input("selection-ids", "data"), MAP)(on_map(cb.gallery))
    app.callback(
        Output("group-a", "data"), Output("group-b", "data"), Output("group-summary", "children"),
        Output("direction-summary", "children"),
        Input("set-group-a", "n_clicks"), Input("set-group-b", "n_clicks"),
        State("selection-ids", "data"), State("group-a", "data"), State("group-b", "data"),
        MAP, prevent_initial_call=True,
    )(on_map(cb.set_group))
    app.callback(
        Output("tag-summary", "children"), Output("colour-by", "options"), Output("colour-by", "value", allow_duplicate=True),
        Input("tag-add", "n_clicks"), Input("tag-remove", "n_clicks"),
        State("tag-name", "value"), State("selection-ids", "data"), State("colour-by", "value"),
        MAP, prevent_initial_call=True,
    )(on_map(cb.tag_selection))
    app.callback(
        Output("inspect-tag-summary", "children"), Output("colour-by", "options", allow_duplicate=True),
        Output("colour-by", "value", allow_duplicate=True), Output("inspect-panel", "children", allow_duplicate=True),
        Input("inspect-tag-add", "n_clicks"), Input("inspect-tag-remove", "n_clicks"),
        State("inspect-tag-name", "value"), State("focus-id", "data"), State("colour-by", "value"),
        MAP, prevent_initial_call=True,
    )(on_map(cb.tag_inspected))
    app.callback(Output("anomaly-table", "columns"), Output("anomaly-table", "data"),
                 Input("tag-summary", "children"), Input("inspect-tag-summary", "children"), MAP,
                 prevent_initial_call=True)(on_map(cb.anomaly_table))
    app.callback(Output("selection-ids", "data", allow_duplicate=True), Output("find-summary", "children"),
                 Output("map", "figure", allow_duplicate=True), Input("find-text", "value"),
                 State("anomaly-threshold", "value"), State("n-base", "data"), MAP, prevent_initial_call=True)(on_map(cb.find))
    app.callback(Output("selection-download", "data"), Input("selection-csv", "n_clicks"), State("selection-ids", "data"),
                 MAP, prevent_initial_call=True)(on_map(cb.download_selection))
    job_outputs = (Output("walk-job", "data"), Output("job-poll", "disabled"), Output("job-progress", "children"),
                   Output("walk-result", "data", allow_duplicate=True))
    app.callback(*job_outputs, Input("walk-run", "n_clicks"), State("walk-ids", "data"), State("walk-method", "value"),
                 State("walk-steps", "value"), State("walk-options", "value"), MAP, prevent_initial_call=True)(on_map(cb.start_walk))
    app.callback(*(Output(o.component_id, o.component_property, allow_duplicate=True) for o in job_outputs),
                 Input("direction-run", "n_clicks"), State("focus-id", "data"), State("group-a", "data"),
                 State("group-b", "data"), State("direction-strength", "value"), State("walk-method", "value"),
                 State("walk-steps", "value"), MAP, prevent_initial_call=True)(on_map(cb.start_direction))
    app.callback(Output("grid-job", "data"), Output("job-poll", "disabled", allow_duplicate=True),
                 Output("job-progress", "children", allow_duplicate=True),
                 Input("grid-run", "n_clicks"), State("grid-size", "value"), State("view-range", "data"),
                 MAP, prevent_initial_call=True)(on_map(cb.start_mosaic))
    app.callback(Output("view-range", "data"), Input("map", "relayoutData"), State("view-range", "data"),
                 MAP, prevent_initial_call=True)(on_map(cb.view_range))
    app.callback(Output("job-progress", "children", allow_duplicate=True), Output("walk-result", "data"),
                 Output("grid-output", "children"), Output("job-poll", "disabled", allow_duplicate=True),
                 Output("walk-job", "data", allow_duplicate=True), Output("grid-job", "data", allow_duplicate=True),
                 Input("job-poll", "n_intervals"), State("walk-job", "data"), State("grid-job", "data"),
                 MAP, prevent_initial_call=True)(on_map(cb.poll))
    app.callback(Output("walk-output", "style"), Output("walk-preview", "src"), Output("walk-frame-img", "src"),
                 Output("walk-strip", "children"), Output("walk-frame", "max"), Output("walk-frame", "marks"),
                 Output("walk-frame", "value"), Output("walk-meta", "children"), Output("download-gif", "href"),
                 Output("download-mp4", "href"), Output("download-strip", "href"), Output("walk-play", "disabled"),
                 Input("walk-result", "data"), MAP, prevent_initial_call=True)(on_map(cb.walk_view))
    app.clientside_callback(
        """
        function(tick, result) {
            // the animation: cycle through the frames the strip has already loaded, forward then back
            if (!result || !result.frames) { return window.dash_clientside.no_update; }
            const n = result.frames, period = Math.max(1, 2 * n - 2), k = tick % period;
            const frame = k < n ? k : period - k;
            return 'jobs/' + result.job + '/frame-' + frame + '.png';
        }
        """,
        Output("walk-preview", "src", allow_duplicate=True), Input("walk-play", "n_intervals"), State("walk-result", "data"),
        prevent_initial_call=True,
    )
    app.clientside_callback(
        """
        function(frame, result) {
            if (!result || frame === null || frame === undefined) { return window.dash_clientside.no_update; }
            document.querySelectorAll('#walk-strip img').forEach(
                (img, i) => img.classList.toggle('current', i === frame));
            return ['jobs/' + result.job + '/frame-' + frame + '.png', 'frame ' + (frame + 1) + ' of ' + result.frames];
        }
        """,
        Output("walk-frame-img", "src", allow_duplicate=True), Output("walk-frame-caption", "children"),
        Input("walk-frame", "value"), State("walk-result", "data"), prevent_initial_call=True,
    )
    app.callback(Output("map", "figure", allow_duplicate=True), Output("anomaly-count", "children"),
                 Input("anomaly-threshold", "value"), State("n-base", "data"), MAP, prevent_initial_call=True)(on_map(cb.highlight_above))
    app.callback(Output("focus-id", "data", allow_duplicate=True),
                 Input("anomaly-table", "active_cell"), State("anomaly-table", "derived_viewport_data"),
                 MAP, prevent_initial_call=True)(on_map(cb.table_focus))

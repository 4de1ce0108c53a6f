"""The page: a header of map controls, the map, a side panel of tabs, and the walk output below."""

from __future__ import annotations

import math

import numpy as np

from dash import dash_table, dcc, html

from .data import ExplorerData
from .figures import OVERLAYS, map_figure

WALK_METHODS = [
    {"label": "slerp (spherical)", "value": "slerp"},
    {"label": "lerp (straight line)", "value": "lerp"},
    {"label": "noise-space slerp (DDIM)", "value": "noise-slerp"},
    {"label": "data-aware path (through real images)", "value": "data-path"},
]
ANOMALY_ROWS = 200


def _control(label: str, control, width: str = "auto") -> html.Div:
    return html.Div([html.Label(label, className="control-label"), control], className="control", style={"width": width})


def _tab(label: str, value: str, children) -> dcc.Tab:
    return dcc.Tab(label=label, value=value, children=children, className="tab", selected_className="tab--selected")


def facts_text(data: ExplorerData) -> str:
    model = data.scope.meta.get("model", {})
    return f"{len(data.points):,} images · map “{data.map_name}” · {model.get('class', 'model')} {model.get('reference', '')}"


def header(data: ExplorerData) -> html.Div:
    facts = facts_text(data)
    controls = [
        _control("Colour by", dcc.Dropdown(id="colour-by", options=data.colour_options(), value=data.default_colour(),
                                           clearable=False, searchable=False), "240px"),
        _control("Point size", dcc.Slider(id="point-size", min=1, max=14, step=1, value=_default_size(len(data.points)),
                                          marks=None, tooltip={"placement": "bottom"}), "160px"),
        _control("Opacity", dcc.Slider(id="point-opacity", min=0.1, max=1.0, step=0.05, value=0.8, marks=None,
                                       tooltip={"placement": "bottom"}), "160px"),
    ]
    chooser = _control("Map", dcc.Dropdown(id="map-name", options=data.map_names, value=data.map_name, clearable=False),
                       "160px")
    if len(data.map_names) < 2:
        chooser.style = {**chooser.style, "display": "none"}  # kept in the page: a map made later shows it
    controls.insert(0, chooser)
    return html.Header(
        [
            html.Div([html.Span("latentscope", className="brand"), html.Span(data.scope.path.name, className="scope-name"),
                      html.Div(facts, className="facts", id="facts")], className="title-block"),
            html.Div(controls, className="controls"),
        ],
        className="header",
    )


def _default_size(n: int) -> int:
    return 7 if n < 2_000 else 5 if n < 20_000 else 3 if n < 200_000 else 2


def tag_controls(prefix: str, placeholder: str, what: str) -> list:
    """A tag name box with Tag and Untag buttons (ids ``{prefix}tag-name``, ``-add``, ``-remove``)."""
    return [
        dcc.Input(id=f"{prefix}tag-name", type="text", placeholder=placeholder, maxLength=64, className="tag-input"),
        html.Button("Tag", id=f"{prefix}tag-add", className="button", n_clicks=0,
                    title=f"mark {what} with this tag (stored in the scope's metadata)"),
        html.Button("Untag", id=f"{prefix}tag-remove", className="button", n_clicks=0),
    ]


def inspect_tab() -> dcc.Tab:
    review = html.Div(
        [
            html.Div(tag_controls("inspect-", "tag, e.g. defect", "the inspected image"), className="row buttons"),
            html.Div(id="inspect-tag-summary", className="hint"),
        ],
        className="panel-body review",
    )
    return _tab(
        label="Inspect", value="inspect",
        children=[html.Div(id="inspect-panel", className="panel-body",
                           children=html.P("Click a point on the map to inspect it.", className="hint")), review],
    )


def walk_tab() -> dcc.Tab:
    return _tab(
        label="Walk", value="walk",
        children=html.Div(
            [
                html.P("Click points on the map, in order, to walk between them.", className="hint"),
                html.Div(id="walk-points", className="chips", children=html.Span("No points yet.", className="hint")),
                html.Div(
                    [
                        _control("Method", dcc.Dropdown(id="walk-method", options=WALK_METHODS, value="slerp", clearable=False), "100%"),
                        html.Div(
                            [
                                _control("Frames", dcc.Input(id="walk-steps", type="number", min=2, max=240, step=1, value=24,
                                                             debounce=True, className="number"), "90px"),
                                _control("Options", dcc.Checklist(id="walk-options", options=[
                                    {"label": " even spacing", "value": "even"},
                                    {"label": " closed loop", "value": "loop"},
                                ], value=[], className="checks"), "auto"),
                            ],
                            className="row",
                        ),
                    ]
                ),
                html.Div(
                    [
                        html.Button("Make walk", id="walk-run", className="button primary", n_clicks=0),
                        html.Button("Clear points", id="walk-clear", className="button", n_clicks=0),
                    ],
                    className="row buttons",
                ),
                html.Hr(),
                html.H4("Direction walk"),
                html.P("Select two groups on the map (Selection tab), then move the inspected image from group A towards "
                       "group B.", className="hint"),
                html.Div(id="direction-summary", className="hint"),
                _control("Strength", dcc.RangeSlider(id="direction-strength", min=-2, max=2, step=0.1, value=[0, 1],
                                                     marks={-2: "-2", -1: "-1", 0: "0", 1: "1", 2: "2"}), "100%"),
                html.Button("Walk along A → B", id="direction-run", className="button", n_clicks=0),
            ],
            className="panel-body",
        ),
    )


def selection_tab() -> dcc.Tab:
    return _tab(
        label="Select", value="select",
        children=html.Div(
            [
                html.P("Use box or lasso select on the map, or find images by text.", className="hint"),
                dcc.Input(id="find-text", type="search", debounce=True, className="find-input",
                          placeholder="find: file name, label or metadata text; or column=value, column>number"),
                html.Div(id="find-summary", className="hint"),
                html.Div(id="selection-count", className="count"),
                html.Div(
                    [
                        html.Button("Use as group A", id="set-group-a", className="button", n_clicks=0),
                        html.Button("Use as group B", id="set-group-b", className="button", n_clicks=0),
                    ],
                    className="row buttons",
                ),
                html.Div(id="group-summary", className="hint"),
                html.Div(
                    [
                        *tag_controls("", "tag name, e.g. reviewed", "the selected images"),
                        html.Button("Download CSV", id="selection-csv", className="button", n_clicks=0,
                                    title="id, file, label, map position, scores and metadata of the selected images"),
                        dcc.Download(id="selection-download"),
                    ],
                    className="row buttons",
                ),
                html.Div(id="tag-summary", className="hint"),
                html.Div(id="selection-gallery", className="gallery"),
            ],
            className="panel-body",
        ),
    )


def threshold_range(values) -> tuple[float, float, float]:
    """The threshold slider's ends and step: a round step of about 1/200 of the scores' range, and ends on that
    step around the scores, so the slider's input box shows short numbers (2.184, not 2.1822047)."""
    low, high = float(values.min()), float(values.max())
    span = high - low
    if not span > 0:
        return low, low + 1.0, 1.0
    step = 10.0 ** math.floor(math.log10(span / 200))
    step *= next(m for m in (5, 2, 1) if m * step <= span / 200)
    decimals = max(0, -math.floor(math.log10(step)))
    return (round(math.floor(low / step) * step, decimals), round(math.ceil(high / step) * step, decimals),
            round(step, decimals))


def anomalies_tab(data: ExplorerData) -> dcc.Tab:
    score = data.default_score_column
    values = data.points[score].dropna() if score else None
    low, high, step = threshold_range(values) if values is not None and len(values) else (0.0, 1.0, 0.01)
    hidden = {} if score else {"display": "none"}
    body = [
        html.P(f"No anomaly scores yet: run 'latentscope score {data.scope.path}'.", className="hint",
               style={"display": "none"} if score else {}),
        html.Div(
            [
                _control("Highlight scores above", dcc.Slider(id="anomaly-threshold", min=low, max=high, value=high,
                                                              step=step, marks=None,
                                                              tooltip={"placement": "bottom"}), "100%"),
                html.Div(id="anomaly-count", className="hint"),
                dash_table.DataTable(
                    id="anomaly-table",
                    columns=anomaly_columns(data, score),
                    data=anomaly_rows(data, score) if score else [],
                    sort_action="native",
                    filter_action="native",  # e.g. 'no' under a tag: the images not reviewed yet
                    page_size=12,
                    style_as_list_view=True,
                    style_table={"overflowX": "auto"},
                    style_cell={"fontFamily": "inherit", "fontSize": "13px", "padding": "6px 8px", "textAlign": "left",
                                "maxWidth": "180px", "overflow": "hidden", "textOverflow": "ellipsis"},
                    style_header={"fontWeight": "600", "backgroundColor": "#F3F4F6"},
                    style_data_conditional=[{"if": {"state": "active"}, "backgroundColor": "#FDE7DF",
                                             "border": "1px solid #E4572E"}],
                ),
            ],
            style=hidden,
        ),
    ]
    return _tab(label="Anomalies", value="anomalies", children=html.Div(body, className="panel-body"))


def anomaly_columns(data: ExplorerData, score: str | None) -> list[dict]:
    """The table's columns: id, score, label, file, the score's terms, and one per tag (yes / no)."""
    columns = [{"name": "id", "id": "id"}, {"name": "score", "id": "score", "type": "numeric", "format": {"specifier": ".3f"}},
               {"name": "label", "id": "label"}, {"name": "file", "id": "path"}]
    if score and data.has_score_terms(score):
        columns.append({"name": "terms (z vs normal)", "id": "terms"})
    return columns + [{"name": tag, "id": f"tag:{tag}"} for tag in data.tag_columns]


def anomaly_rows(data: ExplorerData, score: str, limit: int = ANOMALY_ROWS) -> list[dict]:
    top = data.points.nlargest(limit, score)
    rows = top[["id", score, "label", "path"]].rename(columns={score: "score"})
    if data.has_score_terms(score):
        rows = rows.assign(terms=[data.score_terms(score, int(i)) for i in rows["id"]])
    for tag in data.tag_columns:
        rows[f"tag:{tag}"] = np.where(top[tag].fillna(False).astype(bool), "yes", "no")
    return rows.to_dict("records")


def grid_tab() -> dcc.Tab:
    return _tab(
        label="Mosaic", value="grid",
        children=html.Div(
            [
                html.H4("What lives here?"),
                html.P("Decode a grid of points over the current view of the map: what an image at each place would look "
                       "like. Zoom or pan the map first to choose the area.", className="hint"),
                html.Div(
                    [
                        _control("Grid", dcc.Dropdown(id="grid-size", options=[{"label": f"{n} x {n}", "value": n} for n in (4, 6, 8, 10, 12)],
                                                      value=8, clearable=False), "110px"),
                        html.Button("Decode this view", id="grid-run", className="button primary", n_clicks=0),
                    ],
                    className="row buttons",
                ),
                html.Div(id="grid-output", className="mosaic"),
            ],
            className="panel-body",
        ),
    )


def walk_output() -> html.Div:
    """The decoded walk (hidden until there is one): animation, scrubbed frame, strip, slider, downloads."""
    figure = lambda img_id, caption_id, caption: html.Figure(  # noqa: E731
        [html.Img(id=img_id, className="walk-preview"), html.Figcaption(caption, id=caption_id)], className="walk-figure")
    return html.Div(
        [
            html.Div(id="job-progress", className="progress"),
            html.Div(
                [
                    figure("walk-preview", "walk-preview-caption", "animation"),
                    figure("walk-frame-img", "walk-frame-caption", "frame 1"),
                    html.Div(
                        [
                            html.Div(id="walk-strip", className="walk-strip"),
                            dcc.Slider(id="walk-frame", min=0, max=1, step=1, value=0, marks={}, updatemode="drag",
                                       allow_direct_input=False),
                            html.Div(id="walk-meta", className="walk-meta"),
                            html.Div(
                                [html.Span("Download", className="control-label"),
                                 html.A("GIF", id="download-gif", download="walk.gif"),
                                 html.A("MP4", id="download-mp4", download="walk.mp4"),
                                 html.A("strip PNG", id="download-strip", download="walk-strip.png")],
                                className="downloads",
                            ),
                        ],
                        className="walk-side",
                    ),
                ],
                id="walk-output", className="walk-output", style={"display": "none"},
            ),
        ],
        className="bottom",
    )


def build_layout(data: ExplorerData) -> html.Div:
    figure = map_figure(data, data.default_colour(), _default_size(len(data.points)))
    n_base = len(figure.data) - len(OVERLAYS)
    return html.Div(
        [
            header(data),
            html.Main(
                [
                    html.Div(
                        [
                            dcc.Graph(
                                id="map", figure=figure, className="map", clear_on_unhover=True, responsive=True,
                                style={"height": "100%", "width": "100%"},
                                config={"scrollZoom": True, "displaylogo": False, "doubleClick": "reset",
                                        "modeBarButtonsToRemove": ["toImage", "autoScale2d"]},
                            ),
                            dcc.Tooltip(id="hover-tip", direction="right", className="hover-tip",
                                        children=html.Div([html.Img(id="hover-img", className="hover-img"),
                                                           html.Div(id="hover-text", className="hover-text")])),
                        ],
                        className="map-wrap",
                    ),
                    html.Aside(
                        dcc.Tabs(id="panel-tabs", value="inspect", className="tabs", children=[
                            inspect_tab(), walk_tab(), selection_tab(), anomalies_tab(data), grid_tab()]),
                        className="side",
                    ),
                ],
                className="main",
            ),
            walk_output(),
            dcc.Store(id="n-base", data=n_base),
            dcc.Store(id="map-current", data=data.map_name),
            dcc.Store(id="focus-id"),
            dcc.Store(id="clicked-point"),
            dcc.Store(id="selected-points"),
            dcc.Store(id="walk-ids", data=[]),
            dcc.Store(id="walk-job"),
            dcc.Store(id="walk-result"),
            dcc.Store(id="focus-xy", data=[]),  # [x, y, id] of marks drawn over the map by assets/latentscope.js
            dcc.Store(id="waypoint-xy", data=[]),
            dcc.Store(id="map-marks"),
            dcc.Store(id="selection-ids", data=[]),
            dcc.Store(id="group-a", data=[]),
            dcc.Store(id="group-b", data=[]),
            dcc.Store(id="grid-job"),
            dcc.Store(id="view-range"),
            dcc.Interval(id="job-poll", interval=150, disabled=True),
            dcc.Interval(id="walk-play", interval=90, disabled=True),
        ],
        className="page",
    )

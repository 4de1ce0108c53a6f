"""Dashboard callbacks, routes and access control, without a browser."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("dash")

from dash import Patch, no_update  # noqa: E402
from dash._callback_context import context_value  # noqa: E402
from dash._utils import AttributeDict  # noqa: E402
from dash.exceptions import PreventUpdate  # noqa: E402

from latentscope.dashboard import create_app  # noqa: E402
from latentscope.dashboard.figures import OVERLAYS  # noqa: E402
from latentscope.dashboard.jobs import JobManager  # noqa: E402
from latentscope.dashboard.layout import threshold_range  # noqa: E402
from latentscope.dashboard.loadtest import TRAVERSAL_ATTEMPTS  # noqa: E402
from latentscope.dashboard.routes import COMPILE_HINT, PLOTLY_JS  # noqa: E402
from latentscope.dashboard.security import choose_token, is_loopback  # noqa: E402
from latentscope.errors import InputError  # noqa: E402


@pytest.fixture(scope="module")
def app(explorer_scope):
    return create_app(explorer_scope, device="cpu")


@pytest.fixture
def cb(app):
    return app.latentscope.callbacks


@pytest.fixture
def client(app):
    return app.server.test_client()


def triggered(component_id):
    context_value.set(AttributeDict(triggered_inputs=[{"prop_id": f"{component_id}.n_clicks", "value": 1}]))


def test_map_uses_binary_float32_arrays_and_one_trace_per_label(app):
    figure = app.latentscope.layout()["map"].figure
    base = figure.data[: len(figure.data) - len(OVERLAYS)]
    assert [t.name for t in base] == ["cats", "dogs", "owls"]
    payload = figure.to_plotly_json()
    from plotly.io.json import to_json_plotly

    text = to_json_plotly(payload)
    assert '"dtype":"f4"' in text and '"bdata"' in text


def test_redraw_by_score_gives_a_colour_scale_and_keeps_the_highlight(cb):
    scores = cb.data.points["score:default"]
    threshold = float(scores.quantile(0.9))
    figure, n_base = cb.redraw("score:default", 6, 0.7, threshold)
    assert n_base == 1
    assert figure.data[0].marker.showscale
    names = [t.name for t in figure.data[n_base:]]
    assert list(names) == list(OVERLAYS)
    ringed = figure.data[n_base + OVERLAYS.index("highlight")]
    assert sorted(ringed.customdata) == sorted(cb.data.points["id"][scores >= threshold].tolist())
    figure, n_base = cb.redraw("cluster", 6, 0.7, None)
    assert n_base >= 2


def test_marks_give_map_positions_of_known_ids(cb):
    points = cb.data.points
    first = int(points["id"].iloc[0])
    assert cb.marks([first, 10**9]) == [[float(points["x"].iloc[0]), float(points["y"].iloc[0]), first]]
    assert cb.marks([]) == []


def test_warm_up_prepares_the_first_walk(explorer_scope):
    data = create_app(explorer_scope, device="cpu").latentscope.data
    data.warm_up()
    assert data._models.walker is not None and "_squared_norms" in vars(data) and "flat_latents" in vars(data)


def test_restyle_patches_only_marker_style(cb):
    patch = cb.restyle(9, 0.5, 3)
    assert isinstance(patch, Patch)
    operations = patch.to_plotly_json()["operations"]
    assert len(operations) == 6 and {op["params"]["value"] for op in operations} == {9, 0.5}


def test_click_inspects_and_in_walk_tab_adds_waypoints(cb):
    first, second = cb.data.points["id"].iloc[:2].tolist()
    click = {"id": first, "at": 1}
    assert cb.click(click, "inspect", []) == (first, cb_no_update())
    focus, walk = cb.click(click, "walk", [])
    assert (focus, walk) == (first, [first])
    _, walk = cb.click({"id": second, "at": 2}, "walk", walk)
    assert walk == [first, second]
    with pytest.raises(PreventUpdate):
        cb.click({"id": 10**6, "at": 3}, "walk", walk)
    with pytest.raises(PreventUpdate):
        cb.click(None, "walk", walk)


def cb_no_update():
    from dash import no_update

    return no_update


def test_inspect_panel_lists_facts_images_and_neighbours(cb):
    image_id = int(cb.data.points["id"].iloc[3])
    panel = str(cb.inspect_panel(image_id))
    assert f"image/{image_id}.png" in panel and f"recon/{image_id}.png" in panel
    assert "rank" in panel and "Nearest neighbours" in panel
    neighbours = cb.data.neighbours(image_id, 5)
    assert len(neighbours) == 5 and image_id not in neighbours
    with pytest.raises(PreventUpdate):
        cb.inspect_panel(None)


def test_inspect_panel_explains_a_score_by_its_terms_largest_first(explorer_scope, tmp_path, cb):
    import shutil

    import pandas as pd

    from latentscope.scope import Scope

    image_id = int(cb.data.points["id"].iloc[3])
    assert "terms (z vs normal)" not in str(cb.inspect_panel(image_id))  # the fixture's score has no terms...
    assert "terms" not in cb.table_rows("score:default")[0]  # ...nor does its anomaly table
    scoped = tmp_path / "scope"
    shutil.copytree(explorer_scope, scoped)
    ids = Scope(scoped).ok_manifest()["id"].to_numpy()
    terms = pd.DataFrame({"id": ids, "score": 1.0, "local": 1.04, "density": -0.5, "style": np.where(ids == image_id, 7.25, 0.0),
                          "t0.00": 3.0})
    Scope(scoped).write_scores("default", terms, {"method": "diffusion", "terms": ["local", "density", "style"]})
    app = create_app(scoped, device="cpu")
    callbacks = app.latentscope.callbacks
    assert "terms (z vs normal)" in str(app.latentscope.layout()["anomaly-table"].columns)
    panel = str(callbacks.inspect_panel(image_id))
    assert "terms (z vs normal)" in panel and "style 7.2, local 1.0, density -0.5" in panel and "t0.00" not in panel
    rows = {row["id"]: row["terms"] for row in callbacks.table_rows("score:default")}
    assert rows[image_id] == "style 7.2, local 1.0, density -0.5"
    assert set(rows.values()) == {"style 7.2, local 1.0, density -0.5", "local 1.0, style 0.0, density -0.5"}
    # with the tail surprises stored (the score is their largest), the term that drives the score comes first
    surprises = terms.assign(**{"surprise:local": 2.0, "surprise:density": 5.0, "surprise:style": 0.1})
    Scope(scoped).write_scores("default", surprises, {"method": "diffusion", "terms": ["local", "density", "style"]})
    panel = str(create_app(scoped, device="cpu").latentscope.callbacks.inspect_panel(image_id))
    assert "density -0.5, local 1.0, style 7.2" in panel and "surprise" not in panel


def test_neighbour_and_gallery_clicks_focus_that_image(cb):
    context_value.set(AttributeDict(triggered_inputs=[{"prop_id": '{"id":7,"type":"thumb","where":"gallery"}.n_clicks', "value": 1}]))
    assert cb.neighbour_click([0, 1]) == 7
    with pytest.raises(PreventUpdate):
        cb.neighbour_click([0, 0])


def test_selection_gallery_and_groups(cb):
    ids = cb.data.points["id"].tolist()
    selection, tab = cb.selection(ids[:5] + [ids[0], 10**7])
    assert tab == "select"
    assert selection == ids[:5]
    count, tiles = cb.gallery(selection)
    assert count == "5 selected" and len(tiles) == 5
    triggered("set-group-a")
    group_a, group_b, summary, _ = cb.set_group(1, 0, selection, [], [])
    assert group_a == ids[:5] and group_b == [] and "group A: 5" in summary
    triggered("set-group-b")
    group_a, group_b, _, _ = cb.set_group(1, 1, ids[5:9], group_a, [])
    assert group_b == ids[5:9]


def test_anomaly_threshold_and_table(cb):
    scores = cb.data.points["score:default"]
    threshold = float(scores.quantile(0.8))
    patch, text = cb.highlight_above(threshold, 3)
    expected = int((scores >= threshold).sum())
    assert f"{expected} images" in text
    operations = patch.to_plotly_json()["operations"]
    assert len(operations[0]["params"]["value"]) == expected
    rows = cb.table_rows("score:default")
    assert rows[0]["score"] == pytest.approx(scores.max())
    assert cb.table_focus({"row": 0, "column": 0}, rows) == rows[0]["id"]


@pytest.mark.parametrize("values", [[1.446, 2.18220471], [0.00103, 0.00347], [-3.21, 120.7], [5.0, 5.0]])
def test_threshold_slider_has_round_ends_around_the_scores(values):
    low, high, step = threshold_range(np.array(values))
    assert low <= min(values) and high >= max(values) and step > 0
    assert (high - low) / step <= 401 and (max(values) - min(values)) / step >= 100 or values[0] == values[1]
    for number in (low, high, step):
        assert len(repr(number)) <= 8, number  # short enough for the slider's input box


def test_heatmaps_of_the_default_score_are_served_and_shown(explorer_scope, tmp_path, client, cb):
    import shutil

    from latentscope.anomaly import score

    image_id = int(cb.data.points["id"].iloc[0])
    assert cb.heatmaps is None and client.get(f"/heatmap/{image_id}.png").status_code == 404  # a score without maps
    scoped = tmp_path / "scope"
    shutil.copytree(explorer_scope, scoped)
    score(scoped, method="roundtrip", progress=False, top=0)  # replaces 'default' with a score that has heatmaps
    app = create_app(scoped, device="cpu")
    assert app.latentscope.callbacks.heatmaps is not None
    served = app.server.test_client().get(f"/heatmap/{image_id}.png")
    assert served.status_code == 200 and Image.open(io.BytesIO(served.data)).format == "PNG"
    assert app.server.test_client().get("/heatmap/99999.png").status_code == 404
    panel = app.latentscope.callbacks.inspect_panel(image_id)
    assert f"heatmap/{image_id}.png" in str(panel)
    rows = app.latentscope.callbacks.table_rows("score:default")
    stored = app.latentscope.data.scope.read_scores("default")
    assert rows[0]["score"] == pytest.approx(stored["score"].max()) and rows[0]["id"] == stored.loc[stored["score"].idxmax(), "id"]


def test_walk_chips_and_clear(cb):
    ids = cb.data.points["id"].tolist()[:3]
    chips = cb.walk_chips(ids)
    assert sum(1 for c in chips if getattr(c, "className", "") == "chip") == 3
    assert cb.clear_walk(1) == ([], None)


def test_routes_serve_only_manifest_ids(client, cb):
    image_id = int(cb.data.points["id"].iloc[0])
    thumb = client.get(f"/thumb/{image_id}.jpg")
    assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg"
    original = client.get(f"/image/{image_id}.png")
    assert original.status_code == 200 and Image.open(io.BytesIO(original.data)).size[0] > 0
    recon = client.get(f"/recon/{image_id}.png")
    assert Image.open(io.BytesIO(recon.data)).size == (32, 32)
    assert "id" in client.get(f"/info/{image_id}").get_json()["text"]
    for path in TRAVERSAL_ATTEMPTS:
        assert client.get(path).status_code == 404, path


def test_page_loads_plotly_early_which_is_served_with_a_compile_hint(client):
    page = client.get("/").get_data(as_text=True)
    assert f'<script id="plotly-js" src="/{PLOTLY_JS}" defer></script>' in page
    assert page.index('id="plotly-js"') < page.index("window.Plotly = window.Plotly ||") < page.index("_dash-renderer")
    served = client.get("/" + PLOTLY_JS)
    assert served.status_code == 200 and served.mimetype == "text/javascript"
    assert served.data.startswith(COMPILE_HINT) and b"plotly.js v" in served.data[:200]
    assert client.get("/" + PLOTLY_JS, headers={"If-None-Match": served.headers["ETag"]}).status_code == 304


def test_token_required_off_loopback(explorer_scope):
    app = create_app(explorer_scope, token="s3cret", device="cpu")
    client = app.server.test_client()
    assert client.get("/").status_code == 401
    assert client.get("/thumb/0.jpg").status_code == 401
    assert client.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 401
    first = client.get("/?token=s3cret")
    assert first.status_code == 200 and "latentscope_token" in first.headers.get("Set-Cookie", "")
    assert client.get("/thumb/0.jpg").status_code == 200  # the cookie carries the token now
    basic = base64.b64encode(b"anyone:s3cret").decode()
    assert app.server.test_client().get("/", headers={"Authorization": f"Basic {basic}"}).status_code == 200


def test_choose_token():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and not is_loopback("0.0.0.0")
    assert choose_token("127.0.0.1", None, False) is None
    assert len(choose_token("0.0.0.0", None, False)) > 20
    warnings = []
    assert choose_token("0.0.0.0", None, True, warnings.append) is None and "WARNING" in warnings[0]
    assert choose_token("0.0.0.0", "a-long-enough-token", False) == "a-long-enough-token"
    with pytest.raises(InputError, match="at least 16"):
        choose_token("0.0.0.0", "short", False)


def test_job_manager_runs_reports_and_prunes():
    jobs = JobManager(workers=1)

    def work(job, n):
        for i in range(n):
            job.progress(i + 1, n, f"step {i + 1}")
        return n * 2

    job = jobs.submit("test", work, 3)
    for _ in range(200):
        if job.state == "done":
            break
        import time

        time.sleep(0.01)
    assert job.state == "done" and job.result == 6 and job.status()["done"] == 3

    def fail(job):
        raise ValueError("bad input")

    failed = jobs.run_now("test", fail)
    assert failed.state == "error" and "bad input" in failed.error
    assert jobs.get("nope") is None and jobs.get(job.id) is job


def test_wsgi_entry_point_needs_scope_and_token(explorer_scope, monkeypatch):
    import importlib
    import sys

    for name in ("LATENTSCOPE_TOKEN", "LATENTSCOPE_NO_AUTH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LATENTSCOPE_SCOPE", str(explorer_scope))
    sys.modules.pop("apps.wsgi", None)
    with pytest.raises(SystemExit, match="LATENTSCOPE_TOKEN"):
        importlib.import_module("apps.wsgi")
    monkeypatch.setenv("LATENTSCOPE_TOKEN", "t0ken")
    monkeypatch.setenv("LATENTSCOPE_PREFIX", "/explore/")
    monkeypatch.setenv("LATENTSCOPE_DEVICE", "cpu")
    sys.modules.pop("apps.wsgi", None)
    wsgi = importlib.import_module("apps.wsgi")
    client = wsgi.server.test_client()
    assert client.get("/explore/").status_code == 401
    assert client.get("/explore/?token=t0ken").status_code == 200
    assert client.get("/explore/thumb/0.jpg").status_code == 200


def wait_job(cb, ref, timeout=60):
    import time

    deadline = time.monotonic() + timeout
    while cb.jobs.get(ref["id"]).state in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return cb.jobs.get(ref["id"])


def test_quick_walk_is_shown_at_once_without_polling(cb, monkeypatch):
    ids = cb.data.points["id"].tolist()
    monkeypatch.setattr(cb, "quick_seconds", 60)
    ref, disabled, progress, result = cb.start_walk(1, ids[:2], "lerp", 6, [])
    assert ref is None and disabled is no_update and progress is no_update  # a running mosaic keeps its polling
    assert result["frames"] == 6 and len(result["path"]) == 6 and cb.jobs.get(result["job"]).state == "done"


def test_walk_job_lifecycle_and_files(cb, client, monkeypatch):
    ids = cb.data.points["id"].tolist()
    monkeypatch.setattr(cb, "quick_seconds", 0)  # as for a walk that takes longer than the quick wait: progress, then the poll
    ref, disabled, progress, result = cb.start_walk(1, ids[:2], "slerp", 10, ["even"])
    assert disabled is False and "walk" in str(progress) and result is no_update
    job = wait_job(cb, ref)
    assert job.state == "done", job.error
    messages, result, mosaic, stop, cleared_walk, cleared_grid = cb.poll(1, ref, None)
    assert messages is None and stop is True and cleared_walk is None
    assert result["frames"] == 10 and len(result["path"]) == 10
    style, preview, first, strip, last, marks, value, meta, gif, mp4, png, paused = cb.walk_view(result)
    assert paused is False and preview.endswith("frame-0.png") and value == 0
    assert style == {} and len(strip) == 10 and last == 9 and "even spacing" in meta
    for href, kind in ((gif, "GIF"), (png, "PNG")):
        response = client.get("/" + href)
        assert response.status_code == 200
        assert Image.open(io.BytesIO(response.data)).format == kind
    assert client.get("/" + mp4).data[4:8] == b"ftyp"
    assert "attachment" in client.get("/" + gif).headers["Content-Disposition"]
    assert client.get(f"/jobs/{ref['id']}/frame-9.png").status_code == 200
    assert client.get(f"/jobs/{ref['id']}/frame-10.png").status_code == 404
    assert client.get(f"/jobs/{ref['id']}/secrets.txt").status_code == 404


def test_walk_needs_two_points_and_direction_needs_groups(cb, monkeypatch):
    ref, disabled, message, _ = cb.start_walk(1, [0], "slerp", 10, [])
    assert disabled is True and "two points" in str(message)
    _, _, message, _ = cb.start_direction(1, None, [1], [2], [0, 1], "slerp", 8)
    assert "inspect an image first" in str(message)
    _, _, message, _ = cb.start_direction(1, 0, [], [2], [0, 1], "slerp", 8)
    assert "group A and group B" in str(message)
    ids = cb.data.points["id"].tolist()
    monkeypatch.setattr(cb, "quick_seconds", 0)
    ref, disabled, _, _ = cb.start_direction(1, ids[0], ids[1:5], ids[5:9], [-1, 1], "noise-slerp", 8)
    job = wait_job(cb, ref)
    assert job.state == "done", job.error and len(job.result.pixels) == 8


def test_failed_job_is_reported(cb, monkeypatch):
    from latentscope.dashboard import actions

    def broken(job, data, spec):
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(actions, "run_walk", broken)
    ids = cb.data.points["id"].tolist()
    ref, _, _, result = cb.start_walk(1, ids[:2], "lerp", 4, [])
    assert result is no_update  # a failed quick walk is left to the poll, which reports it
    wait_job(cb, ref)
    messages, result, _, stop, cleared, _ = cb.poll(1, ref, None)
    assert "decoder exploded" in str(messages) and stop is True and cleared is None


def test_mosaic_over_view_and_view_range(cb, client):
    assert cb.view_range({"xaxis.range[0]": 0, "xaxis.range[1]": 1, "yaxis.range[0]": -1, "yaxis.range[1]": 2}, None) == [0, 1, -1, 2]
    assert cb.view_range({"xaxis.autorange": True}, [0, 1, 0, 1]) is None
    with pytest.raises(PreventUpdate):
        cb.view_range({"dragmode": "select"}, None)
    ref, disabled, _ = cb.start_mosaic(1, 4, None)
    job = wait_job(cb, ref)
    assert job.state == "done", job.error
    _, _, mosaic, _, _, cleared = cb.poll(1, None, ref)
    assert "mosaic.png" in str(mosaic) and cleared is None
    image = Image.open(io.BytesIO(client.get(f"/jobs/{ref['id']}/mosaic.png").data))
    assert image.size == (4 * 32 + 3, 4 * 32 + 3)


def test_latents_at_blends_real_latents_near_map_points(cb):
    xy = cb.data.points[["x", "y"]].to_numpy()[:3]
    latents = cb.data.latents_at(xy)
    assert latents.shape == (3, 4, 16, 16)
    exact = cb.data.latents(cb.data.points["id"].iloc[:3])
    assert np.abs(latents - exact).max() < 1e-2  # on a real point the blend is that point
    positions = cb.data.map_positions(exact)
    assert np.abs(positions - xy).max() < 1e-6  # a real image's latent lands exactly on its own point
    between = cb.data.map_positions((exact[:1] + exact[1:2]) / 2)
    assert np.isfinite(between).all() and np.abs(between - xy[:2]).min(axis=1).max() > 1e-4  # placed, not snapped


def _annotated_copy(explorer_scope, tmp_path):
    import shutil

    import pandas as pd

    from latentscope.metadata import annotate
    from latentscope.scope import Scope

    scoped = tmp_path / "scope"
    shutil.copytree(explorer_scope, scoped)
    ok = Scope(scoped).ok_manifest()
    annotate(scoped, pd.DataFrame({"file": ok["path"], "size": np.where(ok["width"] > 40, "large", "small"),
                                   "caption": [f"a picture numbered {i}" for i in range(len(ok))],
                                   "weight": np.linspace(0, 1, len(ok))}))
    return scoped


def test_metadata_columns_colour_the_map_and_show_with_each_image(explorer_scope, tmp_path):
    app = create_app(_annotated_copy(explorer_scope, tmp_path), device="cpu")
    callbacks = app.latentscope.callbacks
    options = [o["value"] for o in callbacks.data.colour_options()]
    assert "size" in options and "weight" in options
    assert "caption" not in options  # free text is shown with each image, not offered as a colouring
    figure, _ = callbacks.redraw("size", 5, 0.8, None)
    assert {t.name for t in figure.data[: len(figure.data) - len(OVERLAYS)]} <= {"large", "small"}
    image_id = int(callbacks.data.points["id"].iloc[2])
    panel = str(callbacks.inspect_panel(image_id))
    assert "a picture numbered 2" in panel and "weight" in panel
    # hovering shows the value of the column the map is coloured by (an unknown column is ignored)
    client = app.server.test_client()
    weight = callbacks.data.points.set_index("id").loc[image_id, "weight"]
    assert client.get(f"/info/{image_id}?colour=weight").get_json()["text"].endswith(f" · weight {weight:.4g}")
    assert client.get(f"/info/{image_id}?colour=size").get_json()["text"].endswith(" · size small") or \
        client.get(f"/info/{image_id}?colour=size").get_json()["text"].endswith(" · size large")
    assert "caption" not in client.get(f"/info/{image_id}?colour=caption").get_json()["text"]


def test_tagging_a_selection_stores_it_and_offers_it_as_a_colouring(explorer_scope, tmp_path):
    import pandas as pd

    from latentscope.scope import Scope

    scoped = _annotated_copy(explorer_scope, tmp_path)
    callbacks = create_app(scoped, device="cpu").latentscope.callbacks
    ids = callbacks.data.points["id"].tolist()
    triggered("tag-add")
    summary, options, colour = callbacks.tag_selection(1, 0, " defect ", ids[:3], "label")
    assert "tagged 3 images · 3 carry 'defect'" in summary and colour is no_update
    assert "defect" in [o["value"] for o in options]
    triggered("tag-remove")
    summary, _, colour = callbacks.tag_selection(1, 1, "defect", ids[:1], "defect")
    assert "2 carry 'defect'" in summary and colour == "defect"  # the map coloured by the tag is redrawn
    assert Scope(scoped).metadata().set_index("id")["defect"].loc[ids[:4]].tolist() == [False, True, True, False]
    assert callbacks.data.points.set_index("id").loc[ids[1], "defect"]
    triggered("tag-add")
    assert "the scope uses that name" in str(callbacks.tag_selection(2, 1, "x", ids[:2], "label")[0])
    assert callbacks.tag_selection(3, 1, "defect", [], "label")[0] == "Select images on the map first."
    download = callbacks.download_selection(1, ids[:4])
    assert download["filename"] == "selection.csv"
    table = pd.read_csv(io.StringIO(download["content"]))
    assert table["id"].tolist() == ids[:4] and table["defect"].tolist() == [False, True, True, False]
    assert {"file", "label", "x", "y", "score:default", "caption", "weight"} <= set(table.columns)
    assert not {"sha256", "row", "status"} & set(table.columns)
    with pytest.raises(PreventUpdate):
        callbacks.download_selection(1, [])


def test_the_inspected_image_is_tagged_while_reviewing(explorer_scope, tmp_path):
    from latentscope.scope import Scope

    scoped = _annotated_copy(explorer_scope, tmp_path)
    callbacks = create_app(scoped, device="cpu").latentscope.callbacks
    image_id = int(callbacks.data.points["id"].iloc[4])
    triggered("inspect-tag-add")
    summary, options, colour, panel = callbacks.tag_inspected(1, 0, "defect", image_id, "defect")
    assert summary == f"tagged image {image_id} · 1 carry 'defect' · saved in the scope" and colour == "defect"
    assert "defect" in [o["value"] for o in options] and "defect" in str(panel) and "True" in str(panel)
    assert Scope(scoped).metadata().set_index("id")["defect"].sum() == 1
    columns, rows = callbacks.anomaly_table(summary, None)  # the anomaly table gains the tag, yes / no per image
    assert {"name": "defect", "id": "tag:defect"} in columns
    assert {row["id"]: row["tag:defect"] for row in rows}[image_id] == "yes"
    assert sorted({row["tag:defect"] for row in rows}) == ["no", "yes"]
    triggered("inspect-tag-remove")
    assert callbacks.tag_inspected(1, 1, "defect", image_id, "label")[0].startswith(f"untagged image {image_id} · 0 carry")
    assert callbacks.tag_inspected(1, 2, "defect", None, "label")[0] == "Click a point on the map first."
    error = callbacks.tag_inspected(1, 3, "", image_id, "label")
    assert "give a name" in str(error[0]) and error[3] is no_update


def test_finding_images_by_text_selects_and_rings_them(explorer_scope, tmp_path):
    callbacks = create_app(_annotated_copy(explorer_scope, tmp_path), device="cpu").latentscope.callbacks
    points = callbacks.data.points
    ids, summary, patch = callbacks.find("  NUMBERED 1 ", None, 3)  # captions 1 and 10-19, in any case
    expected = points.loc[points["caption"].str.contains("numbered 1"), "id"].tolist()
    assert ids == expected and len(ids) == 11 and summary == "11 images match 'NUMBERED 1'"
    ringed = patch.to_plotly_json()["operations"]
    assert ringed[-1]["params"]["value"] == ids
    assert callbacks.find("owls/", None, 3)[0] == points.loc[points["path"].str.startswith("owls/"), "id"].tolist()
    assert callbacks.find("size=LARGE", None, 3)[0] == points.loc[points["size"] == "large", "id"].tolist()
    assert callbacks.find("weight=0", None, 3)[0] == [int(points.loc[points["weight"] == 0, "id"].iloc[0])]
    assert callbacks.find("zebra", None, 3)[:2] == ([], "nothing matches 'zebra'")
    assert callbacks.find("weight >= 0.5", None, 3)[0] == points.loc[points["weight"] >= 0.5, "id"].tolist()
    assert callbacks.find("score:default<1.9", None, 3)[0] == points.loc[points["score:default"] < 1.9, "id"].tolist()
    assert callbacks.find("size!=small", None, 3)[0] == points.loc[points["size"] != "small", "id"].tolist()
    assert callbacks.find("weight>heavy", None, 3)[:2] == ([], "nothing matches 'weight>heavy'")
    ids, summary, patch = callbacks.find("", float(points["score:default"].max()), 3)  # clearing rings the threshold's again
    assert ids == [] and summary == "" and len(patch.to_plotly_json()["operations"][-1]["params"]["value"]) == 1
    selection, _ = callbacks.selection(callbacks.find("cats/", None, 3)[0])
    assert callbacks.gallery(selection)[0] == f"{len(selection)} selected"


def _two_map_copy(explorer_scope, tmp_path):
    """A copy of the explorer scope with a second map, 'mirrored': x negated, and without its first image."""
    import shutil

    from latentscope.scope import Scope

    scoped = tmp_path / "scope"
    shutil.copytree(explorer_scope, scoped)
    first = Scope(scoped).read_map("default")
    mirrored = first.assign(x=-first["x"]).iloc[1:]
    Scope(scoped).write_map("mirrored", mirrored.reset_index(drop=True), {"method": "mirror-for-tests"})
    return scoped, first


def test_each_page_shows_the_map_it_chose_with_the_marks_moved_there(explorer_scope, tmp_path):
    scoped, first = _two_map_copy(explorer_scope, tmp_path)
    app = create_app(scoped, device="cpu")
    assert app.latentscope.layout()["map-name"].options == ["default", "mirrored"] and app.latentscope.layout()["map-current"].data == "default"
    cb = app.latentscope.callbacks
    image_id = int(first["id"].iloc[5])
    name, figure, n_base, facts, focus, waypoints, walk, view = cb.show_map("mirrored", "label", 5, 0.8, None, image_id,
                                                                           [image_id])
    assert name == "mirrored" and facts.startswith("39 images · map “mirrored”") and walk is None and view is None
    x = float(first.set_index("id").loc[image_id, "x"])
    assert focus[0][0] == pytest.approx(-x) and waypoints == focus
    xs = np.concatenate([np.asarray(t.x) for t in figure.data[:n_base]])
    assert np.allclose(np.sort(xs), np.sort(-first["x"].iloc[1:].to_numpy()), atol=1e-5)
    assert figure.layout.uirevision == "map:mirrored"  # a new map starts at its own full view
    # the page's callbacks now run on that map; the default map's callbacks are untouched
    mirrored = cb.for_map("mirrored")
    assert mirrored.marks([image_id])[0][0] == pytest.approx(-x) and cb.marks([image_id])[0][0] == pytest.approx(x)
    assert not mirrored.data.knows(int(first["id"].iloc[0])) and cb.data.knows(int(first["id"].iloc[0]))
    assert mirrored.data._models is cb.data._models and cb.for_map("nope") is cb
    # a tag made on one map is on the other's points too
    triggered("tag-add")
    mirrored.tag_selection(1, 0, "seen", [image_id], "label")
    assert bool(cb.data.points.set_index("id").loc[image_id, "seen"])


def _control_holding(component, control_id):
    """The control block (label + control) around the component with ``control_id``."""
    children = getattr(component, "children", None)
    for child in children if isinstance(children, list) else [children] if children is not None else []:
        if getattr(child, "id", None) == control_id:
            return component
        found = _control_holding(child, control_id)
        if found is not None:
            return found
    return None


def test_a_single_map_hides_the_map_choice(app):
    page = app.latentscope.layout()
    assert page["map-name"].options == ["default"] and page["map-current"].data == "default"
    assert _control_holding(page, "map-name").style["display"] == "none"
    assert "display" not in _control_holding(page, "colour-by").style


def test_a_reloaded_page_shows_what_another_process_wrote_since(explorer_scope, tmp_path):
    import os

    from latentscope.metadata import annotate
    from latentscope.scope import Scope

    scoped, first = _two_map_copy(explorer_scope, tmp_path)
    os.remove(scoped / "maps" / "mirrored.parquet")  # start with one map and no heatmaps
    meta = Scope(scoped).meta
    meta["maps"].pop("mirrored")
    (scoped / "scope.json").write_text(__import__("json").dumps(meta))
    app = create_app(scoped, device="cpu")
    cb = app.latentscope.callbacks
    page = app.latentscope.layout()
    assert page is app.latentscope.layout()  # unchanged scope: the same page, not rebuilt
    assert page["map-name"].options == ["default"] and cb.heatmaps is None
    # another process adds a map, metadata and a score with heatmaps while the explorer runs
    Scope(scoped).write_map("mirrored", first.assign(x=-first["x"]), {"method": "mirror-for-tests"})
    annotate(scoped, __import__("pandas").DataFrame({"id": first["id"], "note": "new"}))
    from latentscope.anomaly import score

    score(scoped, method="roundtrip", progress=False, top=0)
    assert app.latentscope.data.changed()
    page = app.latentscope.layout()
    assert page["map-name"].options == ["default", "mirrored"] and "display" not in _control_holding(page, "map-name").style
    assert "note" in app.latentscope.data.points and cb.heatmaps is not None
    image_id = int(first["id"].iloc[3])
    assert app.server.test_client().get(f"/heatmap/{image_id}.png").status_code == 200
    assert cb.for_map("mirrored").marks([image_id])[0][0] == pytest.approx(-float(first.set_index("id").loc[image_id, "x"]))
    # a scope left without maps keeps showing what was read before
    for name in ("default", "mirrored"):
        os.remove(scoped / "maps" / f"{name}.parquet")
    Scope(scoped).update_meta(maps={})
    assert app.latentscope.layout() is page

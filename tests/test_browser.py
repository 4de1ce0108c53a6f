"""The explorer in a real headless Chromium: hover, click, select, sort, download; screenshots of each state."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

if not shutil.which("chromedriver") or not Path("/usr/bin/chromium").exists():
    pytest.skip("Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)", allow_module_level=True)

from selenium.webdriver.common.actions.action_builder import ActionBuilder  # noqa: E402

from latentscope.dashboard import create_app  # noqa: E402

SHOTS = Path(__file__).resolve().parents[1] / "tests" / "screenshots"


def shot(dash_duo, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    dash_duo.driver.save_screenshot(str(SHOTS / f"{name}.png"))


def point_position(dash_duo, image_id: int) -> tuple[float, float]:
    """Pixel position of a point on the page, from plotly's own axis conversion."""
    return dash_duo.driver.execute_script(
        """
        const gd = document.querySelector('#map .js-plotly-plot');
        const id = arguments[0];
        for (const trace of gd._fullData) {
            const ids = trace.customdata;
            if (!ids) continue;
            for (let i = 0; i < ids.length; i++) {
                if (ids[i] === id) {
                    const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
                    const box = gd.getBoundingClientRect();
                    return [box.left + xa._offset + xa.l2p(trace.x[i]), box.top + ya._offset + ya.l2p(trace.y[i])];
                }
            }
        }
        return null;
        """,
        image_id,
    )


def move_to(dash_duo, x: float, y: float, click: bool = False) -> None:
    """Move the real mouse pointer to viewport position (x, y), optionally clicking there."""
    builder = ActionBuilder(dash_duo.driver)
    builder.pointer_action.move_to_location(int(round(x)), int(round(y)))
    if click:
        builder.pointer_action.click()
    builder.perform()


def serve_copy(dash_duo, explorer_scope, tmp_path):
    """Serve a copy of the explorer scope (for tests that write to it) and wait for the map; returns the app."""
    scoped = tmp_path / "scope"
    shutil.copytree(explorer_scope, scoped)
    app = create_app(scoped, device="cpu")
    dash_duo.start_server(app)
    dash_duo.wait_for_element("#map .main-svg", timeout=20)
    time.sleep(0.5)
    return app


@pytest.fixture
def explorer(dash_duo, explorer_scope):
    app = create_app(explorer_scope, device="cpu")
    dash_duo.start_server(app)
    dash_duo.wait_for_element("#map .main-svg", timeout=20)
    time.sleep(0.5)
    return dash_duo, app


def test_page_loads_without_console_errors(explorer):
    dash_duo, app = explorer
    shot(dash_duo, "01-map")
    assert dash_duo.find_element("#facts").text.startswith(f"{len(app.latentscope.data.points)} images")
    assert dash_duo.get_logs() == []
    # the points are drawn at the screen's pixel ratio, not plotly's default of twice it
    widths = dash_duo.driver.execute_script(
        "const c = document.querySelector('#map canvas.gl-canvas-focus');"
        "return [c.width, c.getBoundingClientRect().width * window.devicePixelRatio];")
    assert abs(widths[0] - widths[1]) <= 1
    # plotly.js is the page's own deferred script, loaded once: dcc.Graph waited for it rather than adding a copy
    assert plotly_script_ids(dash_duo) == ["plotly-js"]


def plotly_script_ids(dash_duo) -> list[str]:
    return dash_duo.driver.execute_script(
        "return [...document.scripts].filter((s) => s.src.includes('plotly.min.js')).map((s) => s.id)")


def test_map_waits_for_a_slow_plotly_without_loading_a_second_copy(dash_duo, explorer_scope):
    """The layout arrives long before plotly.js: the map's Graph mounts while ``window.Plotly`` is still the
    page's placeholder, and must wait for the deferred script rather than add its own."""
    app = create_app(explorer_scope, device="cpu")
    serve_plotly = app.server.view_functions["latentscope_plotly_js"]

    def slow_plotly():
        time.sleep(3)
        return serve_plotly()

    app.server.view_functions["latentscope_plotly_js"] = slow_plotly
    dash_duo.start_server(app)
    dash_duo.wait_for_element("#map .main-svg", timeout=30)
    assert len(plotly_script_ids(dash_duo)) == 1
    assert dash_duo.get_logs() == []


def test_hover_shows_thumbnail(explorer):
    dash_duo, app = explorer
    image_id = int(app.latentscope.data.points["id"].iloc[5])
    x, y = point_position(dash_duo, image_id)
    move_to(dash_duo, x, y)
    dash_duo.wait_for_contains_text("#hover-text", f"id {image_id}", timeout=10)
    src = dash_duo.find_element("#hover-img").get_attribute("src")
    assert src.endswith(f"/thumb/{image_id}.jpg")
    assert dash_duo.driver.execute_script("return document.querySelector('#hover-img').naturalWidth") > 0
    shot(dash_duo, "02-hover")
    assert dash_duo.get_logs() == []


def test_click_inspects_a_point(explorer):
    dash_duo, app = explorer
    image_id = int(app.latentscope.data.points["id"].iloc[7])
    x, y = point_position(dash_duo, image_id)
    move_to(dash_duo, x, y, click=True)
    wait_inspecting(dash_duo, image_id)
    wait_images_loaded(dash_duo, "#inspect-panel img")
    assert f"recon/{image_id}.png" in dash_duo.find_element("#inspect-panel").get_attribute("innerHTML")
    shot(dash_duo, "03-inspect")
    assert dash_duo.get_logs() == []


def test_reviewing_tags_the_inspected_image(dash_duo, explorer_scope, tmp_path):
    app = serve_copy(dash_duo, explorer_scope, tmp_path)
    image_id = int(app.latentscope.data.points.nlargest(1, "score:default")["id"].iloc[0])  # first in the table
    move_to(dash_duo, *point_position(dash_duo, image_id), click=True)
    wait_inspecting(dash_duo, image_id)
    dash_duo.find_element("#inspect-tag-name").send_keys("defect")
    dash_duo.find_element("#inspect-tag-add").click()
    dash_duo.wait_for_contains_text("#inspect-tag-summary", f"tagged image {image_id} · 1 carry 'defect'", timeout=10)
    dash_duo.wait_for_contains_text("#inspect-panel .facts-table", "defect", timeout=10)
    assert bool(app.latentscope.data.points.set_index("id").loc[image_id, "defect"])
    next(t for t in dash_duo.driver.find_elements("css selector", "#panel-tabs .tab") if t.text == "Anomalies").click()
    dash_duo.wait_for_contains_text("#anomaly-table", "defect", timeout=10)  # the table has the tag's column
    cells = dash_duo.driver.find_elements("css selector", "#anomaly-table td[data-dash-column='tag:defect']")
    assert [c.text for c in cells][:2] == ["yes", "no"] and [c.text for c in cells].count("yes") == 1
    assert dash_duo.get_logs() == []


def test_choosing_another_map_redraws_it_and_moves_the_marks(dash_duo, explorer_scope, tmp_path):
    from latentscope.scope import Scope

    scoped = tmp_path / "scope"
    shutil.copytree(explorer_scope, scoped)
    first = Scope(scoped).read_map("default")
    Scope(scoped).write_map("mirrored", first.assign(x=-first["x"]), {"method": "mirror-for-tests"})
    app = create_app(scoped, device="cpu")
    dash_duo.start_server(app)
    dash_duo.wait_for_element("#map .main-svg", timeout=20)
    time.sleep(0.5)
    image_id = int(first["id"].iloc[7])
    before = point_position(dash_duo, image_id)
    move_to(dash_duo, *before, click=True)
    wait_inspecting(dash_duo, image_id)
    dash_duo.select_dcc_dropdown("#map-name", "mirrored")
    dash_duo.wait_for_contains_text("#facts", "map “mirrored”", timeout=10)
    deadline = time.monotonic() + 10
    while (after := point_position(dash_duo, image_id)) == before:
        assert time.monotonic() < deadline, "the map was not redrawn"
        time.sleep(0.1)
    focus = "const c = document.querySelector('#map svg.mark-layer .focus'); return c && [c.getAttribute('cx'), c.getAttribute('cy')];"
    left, top = dash_duo.driver.execute_script(
        "const r = document.querySelector('#map svg.mark-layer').getBoundingClientRect(); return [r.left, r.top];")
    while True:  # the focus ring follows the image to its place on the new map
        cx, cy = dash_duo.driver.execute_script(focus)
        if abs(left + float(cx) - after[0]) < 1.5 and abs(top + float(cy) - after[1]) < 1.5:
            break
        assert time.monotonic() < deadline, "the focus ring stayed where the image was on the old map"
        time.sleep(0.1)
    other = int(first["id"].iloc[20])
    move_to(dash_duo, *point_position(dash_duo, other), click=True)
    wait_inspecting(dash_duo, other)
    shot(dash_duo, "07-second-map")
    assert dash_duo.get_logs() == []


def test_reloading_the_page_shows_a_map_made_while_serving(dash_duo, explorer_scope, tmp_path):
    from latentscope.scope import Scope

    scoped = tmp_path / "scope"
    shutil.copytree(explorer_scope, scoped)
    dash_duo.start_server(create_app(scoped, device="cpu"))
    dash_duo.wait_for_element("#map .main-svg", timeout=20)
    assert not dash_duo.find_element("#map-name").is_displayed()
    first = Scope(scoped).read_map("default")
    Scope(scoped).write_map("mirrored", first.assign(x=-first["x"]), {"method": "mirror-for-tests"})
    dash_duo.driver.refresh()
    dash_duo.wait_for_element("#map .main-svg", timeout=20)
    assert dash_duo.find_element("#map-name").is_displayed()
    dash_duo.select_dcc_dropdown("#map-name", "mirrored")
    dash_duo.wait_for_contains_text("#facts", "map “mirrored”", timeout=10)
    assert dash_duo.get_logs() == []


def wait_inspecting(dash_duo, image_id: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while f"recon/{image_id}.png" not in dash_duo.find_element("#inspect-panel").get_attribute("innerHTML"):
        assert time.monotonic() < deadline, f"the inspect panel never showed image {image_id}"
        time.sleep(0.1)


def wait_images_loaded(dash_duo, selector: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    script = f"return Array.from(document.querySelectorAll('{selector}')).every(i => i.complete && i.naturalWidth > 0)"
    while not dash_duo.driver.execute_script(script):
        assert time.monotonic() < deadline, f"images {selector} did not load"
        time.sleep(0.1)


def box_select_left_half(dash_duo) -> float:
    """Drag a selection box over the left half of the map; returns the map x at its right edge."""
    dash_duo.find_element(".modebar-btn[data-val='select']").click()
    left, top, right, bottom = dash_duo.driver.execute_script(
        """
        const gd = document.querySelector('#map .js-plotly-plot');
        const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
        return [box.left + xa._offset, box.top + ya._offset, box.left + xa._offset + xa._length / 2, box.top + ya._offset + ya._length];
        """
    )
    builder = ActionBuilder(dash_duo.driver)
    builder.pointer_action.move_to_location(int(left + 2), int(top + 2)).pointer_down()
    builder.pointer_action.move_to_location(int((left + right) / 2), int(bottom - 10))
    builder.pointer_action.move_to_location(int(right), int(bottom - 2)).pointer_up()
    builder.perform()
    dash_duo.wait_for_contains_text("#selection-count", "selected", timeout=10)
    return dash_duo.driver.execute_script(
        "const gd = document.querySelector('#map .js-plotly-plot'); const xa = gd._fullLayout.xaxis;"
        "return xa.p2l(xa._length / 2);"
    )


def test_box_select_shows_gallery_with_matching_count(explorer):
    dash_duo, app = explorer
    points = app.latentscope.data.points
    x_limit = box_select_left_half(dash_duo)
    expected = int((points["x"] <= x_limit).sum())
    count = int(dash_duo.find_element("#selection-count").text.split()[0].replace(",", ""))
    assert abs(count - expected) <= 1 and count > 0
    tiles = dash_duo.driver.find_elements("css selector", "#selection-gallery .thumb-button")
    assert len(tiles) == min(count, 60)
    shot(dash_duo, "04-selection")
    assert dash_duo.get_logs() == []


def test_finding_by_text_selects_and_rings_the_matches(explorer):
    dash_duo, app = explorer
    points = app.latentscope.data.points
    expected = int(points["path"].str.startswith("owls/").sum())
    next(t for t in dash_duo.driver.find_elements("css selector", "#panel-tabs .tab") if t.text == "Select").click()
    dash_duo.find_element("#find-text").send_keys("OWLS/\n")
    dash_duo.wait_for_text_to_equal("#find-summary", f"{expected} images match 'OWLS/'", timeout=10)
    dash_duo.wait_for_text_to_equal("#selection-count", f"{expected} selected", timeout=10)
    ringed = dash_duo.driver.execute_script(
        "const gd = document.querySelector('#map .js-plotly-plot');"
        "return gd._fullData.find(t => t.name === 'highlight').x.length;")
    assert ringed == expected
    assert dash_duo.get_logs() == []


def test_a_selection_is_tagged_coloured_by_its_tag_and_downloaded(dash_duo, explorer_scope, tmp_path):
    import pandas as pd

    app = serve_copy(dash_duo, explorer_scope, tmp_path)
    box_select_left_half(dash_duo)
    count = int(dash_duo.find_element("#selection-count").text.split()[0].replace(",", ""))
    dash_duo.find_element("#tag-name").send_keys("reviewed")
    dash_duo.find_element("#tag-add").click()
    dash_duo.wait_for_contains_text("#tag-summary", f"{count:,} carry 'reviewed'", timeout=10)
    downloads = tmp_path / "downloads"  # our own browser options leave dash.testing's download settings out
    downloads.mkdir()
    dash_duo.driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    dash_duo.find_element("#selection-csv").click()
    target = downloads / "selection.csv"
    deadline = time.monotonic() + 10
    while not target.is_file():
        assert time.monotonic() < deadline, "the selection's CSV was not downloaded"
        time.sleep(0.2)
    time.sleep(0.3)
    table = pd.read_csv(target)
    assert len(table) == count and table["reviewed"].all() and {"file", "x", "y", "label"} <= set(table.columns)
    dash_duo.select_dcc_dropdown("#colour-by", "reviewed")
    dash_duo.wait_for_text_to_equal("#map .legend .traces:nth-child(2) .legendtext", "True", timeout=10)
    assert int(app.latentscope.data.points["reviewed"].sum()) == count
    shot(dash_duo, "05-tagged")
    assert dash_duo.get_logs() == []


def test_anomaly_table_sorts_and_highlights_the_point(explorer):
    dash_duo, app = explorer
    tabs = dash_duo.driver.find_elements("css selector", "#panel-tabs .tab")
    next(t for t in tabs if t.text == "Anomalies").click()
    dash_duo.wait_for_element("#anomaly-table .dash-spreadsheet", timeout=10)
    score_header = next(h for h in dash_duo.driver.find_elements("css selector", "#anomaly-table th.dash-header")
                        if "score" in h.text)
    score_header.find_element("css selector", ".column-header--sort").click()  # ascending
    first_score = float(dash_duo.find_element("#anomaly-table td[data-dash-column='score']").text)
    scores = app.latentscope.data.points["score:default"]
    assert first_score == pytest.approx(scores.nsmallest(200).min(), abs=1e-3) or first_score == pytest.approx(
        scores.nlargest(200).min(), abs=1e-3)
    cell = dash_duo.find_element("#anomaly-table td[data-dash-column='id']")
    row_id = int(cell.text)
    cell.click()
    script = ("return Array.from(document.querySelectorAll('#map svg.mark-layer .focus'))"
              ".map(c => Number(c.getAttribute('data-id')));")
    deadline = time.monotonic() + 15
    while dash_duo.driver.execute_script(script) != [row_id]:
        assert time.monotonic() < deadline, "the table row's point was never highlighted on the map"
        time.sleep(0.1)
    shot(dash_duo, "05-anomalies")
    assert dash_duo.get_logs() == []


def test_click_two_points_walk_strip_and_gif_download(explorer, tmp_path):
    dash_duo, app = explorer
    tabs = dash_duo.driver.find_elements("css selector", "#panel-tabs .tab")
    next(t for t in tabs if t.text == "Walk").click()
    dash_duo.wait_for_element("#walk-run", timeout=10)
    ids = app.latentscope.data.points["id"].iloc[[2, 30]].tolist()
    for image_id in ids:
        x, y = point_position(dash_duo, int(image_id))
        move_to(dash_duo, x, y, click=True)
        time.sleep(0.4)
    dash_duo.wait_for_text_to_equal("#walk-points .chip:nth-child(3) span:last-child", f"id {ids[1]}", timeout=10)
    waypoints = dash_duo.driver.execute_script(
        "return Array.from(document.querySelectorAll('#map svg.mark-layer .waypoint'))"
        ".map(c => [Number(c.getAttribute('data-id')), c.getAttribute('cx'), c.getAttribute('cy')]);")
    assert [w[0] for w in waypoints] == ids, "the clicked points are marked on the map, in order"
    left, top = dash_duo.driver.execute_script(
        "const r = document.querySelector('#map svg.mark-layer').getBoundingClientRect(); return [r.left, r.top];")
    for (image_id, cx, cy) in waypoints:  # each mark sits on its point
        x, y = point_position(dash_duo, image_id)
        assert abs(left + float(cx) - x) < 1.5 and abs(top + float(cy) - y) < 1.5
    steps = dash_duo.find_element("#walk-steps")
    steps.clear()
    steps.send_keys("12\t")
    dash_duo.find_element("#walk-run").click()
    deadline = time.monotonic() + 60
    while len(dash_duo.driver.find_elements("css selector", "#walk-strip img")) != 12:
        assert time.monotonic() < deadline, "the walk strip never showed 12 frames"
        time.sleep(0.2)
    wait_images_loaded(dash_duo, "#walk-strip img")
    wait_images_loaded(dash_duo, "#walk-preview")
    first = dash_duo.find_element("#walk-preview").get_attribute("src")
    time.sleep(0.5)
    assert dash_duo.find_element("#walk-preview").get_attribute("src") != first, "the animation should play"
    layer = (
        "const layer = document.querySelector('#map svg.mark-layer');"
        "const frame = layer.querySelector('.walk-frame');"
        "return [layer.querySelector('.walk-path').getAttribute('points').trim().split(' ').length,"
        " layer.querySelectorAll('.walk-step').length, frame.getAttribute('cx'), frame.getAttribute('cy'),"
        " Array.from(layer.querySelectorAll('.walk-step')).map(c => [c.getAttribute('cx'), c.getAttribute('cy')])];"
    )
    polyline, steps, *marker, step_xy = dash_duo.driver.execute_script(layer)
    assert polyline == steps == 12 and marker == step_xy[0], "the path is drawn with the marker on frame 1"
    dash_duo.driver.execute_script(
        "window.dash_clientside.set_props('walk-frame', {value: 5});"
    )
    time.sleep(0.3)
    *_, marker_x, marker_y, step_xy = dash_duo.driver.execute_script(layer)
    assert [marker_x, marker_y] == step_xy[5], "scrubbing moves the map marker to that frame"
    href = dash_duo.find_element("#download-gif").get_attribute("href")
    import urllib.request

    from PIL import Image

    gif = tmp_path / "walk.gif"
    gif.write_bytes(urllib.request.urlopen(href, timeout=30).read())
    with Image.open(gif) as image:
        assert image.format == "GIF" and image.n_frames == 12
    shot(dash_duo, "06-walk")
    assert dash_duo.get_logs() == []

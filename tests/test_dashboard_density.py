"""Dense maps (issue 9): a density image of the view, with the points appearing once zoomed in.

The threshold is a million points in use; here it is set to a few hundred so the tests stay small.
"""

from __future__ import annotations

import base64
import io
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

pytest.importorskip("dash")

from dash.exceptions import PreventUpdate  # noqa: E402

from latentscope.dashboard import create_app  # noqa: E402
from latentscope.dashboard.data import ExplorerData  # noqa: E402
from latentscope.dashboard.figures import OVERLAYS, map_figure  # noqa: E402
from latentscope.scope import Scope  # noqa: E402

from conftest import latent_scope  # noqa: E402

N = 600


@pytest.fixture(scope="module")
def dense_scope(tmp_path_factory):
    """600 points: three labelled blobs, the 'c' blob alone in the upper right; a score per image."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.array(["a", "b", "c"]), N // 3)
    centres = {"a": (-5.0, -5.0), "b": (-5.0, 5.0), "c": (5.0, 5.0)}
    xy = np.array([centres[label] for label in labels]) + rng.normal(scale=0.5, size=(N, 2))
    path = latent_scope(tmp_path_factory.mktemp("dense") / "scope", rng.normal(size=(N, 4, 2, 2)).astype(np.float32), labels)
    scope = Scope(path)
    scope.write_map("default", pd.DataFrame({"id": np.arange(N), "x": xy[:, 0], "y": xy[:, 1]}), {"method": "test"})
    scope.write_scores("default", pd.DataFrame({"id": np.arange(N), "score": xy[:, 0]}), {"method": "test"})
    return path


def dense_data(path, **options) -> ExplorerData:
    return ExplorerData(path, device="cpu", **{"density_threshold": 100, "zoom_points": 250, **options})


def image_of(figure) -> np.ndarray:
    (image,) = figure.layout.images
    assert image.source.startswith("data:image/png;base64,") and image.xref == "x" and image.sizing == "stretch"
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(image.source.split(",", 1)[1]))).convert("RGBA"))


def drawn_ids(figure) -> set[int]:
    base = figure.data[: len(figure.data) - len(OVERLAYS)]
    return {int(i) for trace in base for i in (trace.customdata if trace.customdata is not None else [])}


@pytest.mark.parametrize("colour", ["label", "score:default", "none"])
def test_a_dense_map_is_a_density_image_without_points_until_zoomed(dense_scope, colour):
    data = dense_data(dense_scope)
    assert data.dense
    figure = map_figure(data, colour)
    rgba = image_of(figure)
    assert drawn_ids(figure) == set()
    assert (rgba[..., 3] > 0).sum() >= 300  # the blobs are drawn
    names = [t.name for t in figure.data[: len(figure.data) - len(OVERLAYS)]]
    assert names == (["a", "b", "c"] if colour == "label" else ["score default"] if colour.startswith("score") else ["images"])

    view = [3.0, 8.0, 2.0, 8.0]  # around blob c: 200 points, under zoom_points
    zoomed = map_figure(data, colour, view=view)
    assert drawn_ids(zoomed) == set(data.points["id"].to_numpy()[data.rows_in_view(view)]) and len(drawn_ids(zoomed)) > 150
    assert drawn_ids(zoomed) <= set(range(400, 600))


def test_the_image_is_upright_and_coloured_by_category(dense_scope):
    data = dense_data(dense_scope)
    rgba = image_of(map_figure(data, "label", view=[-8.0, 8.0, -8.0, 8.0]))
    h, w = rgba.shape[:2]
    alpha = rgba[..., 3] > 0
    assert alpha[: h // 2, w // 2 :].any() and not alpha[h // 2 :, w // 2 :].any()  # blob c: upper right only
    assert alpha[h // 2 :, : w // 2].any() and alpha[: h // 2, : w // 2].any()  # a lower left, b upper left
    upper_right = rgba[: h // 2, w // 2 :][alpha[: h // 2, w // 2 :]][:, :3].mean(0)
    lower_left = rgba[h // 2 :, : w // 2][alpha[h // 2 :, : w // 2]][:, :3].mean(0)
    assert np.abs(upper_right - lower_left).max() > 40  # different categories, different colours


def test_without_datashader_a_histogram_image_is_drawn(dense_scope, monkeypatch):
    monkeypatch.setitem(sys.modules, "datashader", None)
    data = dense_data(dense_scope)
    rgba = image_of(map_figure(data, "label", view=[-8.0, 8.0, -8.0, 8.0]))
    h, w = rgba.shape[:2]
    alpha = rgba[..., 3] > 0
    assert alpha[: h // 2, w // 2 :].any() and not alpha[h // 2 :, w // 2 :].any()


def test_small_maps_keep_all_points_and_no_image(dense_scope):
    figure = map_figure(ExplorerData(dense_scope, device="cpu"), "label")
    assert not figure.layout.images and len(drawn_ids(figure)) == N


def test_the_app_redraws_a_dense_map_when_the_view_changes(dense_scope):
    app = create_app(dense_scope, device="cpu", density_threshold=100)
    assert app.latentscope.layout()["map"].figure.layout.images  # the first page already shows the density image
    cb = app.latentscope.callbacks
    assert len(drawn_ids(app.latentscope.layout()["map"].figure)) == N  # all 600 are under the 100,000 drawn on zoom
    cb.data.zoom_points = 250
    figure, n_base = cb.redraw_view([3.0, 8.0, 2.0, 8.0], "label", 5, 0.8, None)
    assert n_base == 3 and 450 in drawn_ids(figure) and figure.layout.images
    whole, _ = cb.redraw_view(None, "label", 5, 0.8, None)
    assert drawn_ids(whole) == set()

    plain = create_app(dense_scope, device="cpu").latentscope.callbacks
    with pytest.raises(PreventUpdate):
        plain.redraw_view([3.0, 8.0, 2.0, 8.0], "label", 5, 0.8, None)

"""Maps of large sets (issue 9): fit on a sample, place the rest in batches; the cell index; cuML when installed."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from latentscope.errors import InputError
from latentscope.projection import load_projection, map_is_current, project
from latentscope.projection.cells import CellIndex
from latentscope.projection.neighbors import exact_search
from latentscope.projection.scale import representative_sample
from latentscope.scope import Scope

from conftest import latent_scope
from test_projection import blobs


@pytest.fixture(scope="module")
def big_scope(tmp_path_factory):
    latents, labels = blobs(n=3000, centres=5, seed=4)
    return latent_scope(tmp_path_factory.mktemp("scale") / "scope", latents, labels), labels


def test_large_sets_are_fitted_on_a_sample_and_the_rest_placed(big_scope):
    path, labels = big_scope
    summary = project(path, seed=0, sample_threshold=1000, sample_size=600, progress=False)
    assert summary.points == 3000 and summary.sample == 600 and summary.placed == 2400
    assert "fitted on a random sample of 600 images; the other 2,400 placed with transform" in summary.lines()
    frame = Scope(path).read_map("default")
    assert frame["id"].tolist() == list(range(3000)) and int(frame["fitted"].sum()) == 600
    assert np.isfinite(frame[["x", "y"]].to_numpy()).all()
    quality = summary.quality
    assert quality["trustworthiness"] > 0.9 and quality["label_agreement_map"] > 0.95
    entry = Scope(path).meta["maps"]["default"]
    assert entry["params"]["sample_size"] == 600 and entry["params"]["layout"] == "latentscope"
    assert "sample600s0" in entry["index"] and map_is_current(path)
    model = load_projection(path)  # the stored map reloads: its training set is the sample
    assert len(model.embedding_) == 600 and np.array_equal(model.ids_, np.flatnonzero(frame["fitted"]))
    again = project(path, "again", seed=0, sample_threshold=1000, sample_size=600, progress=False, quality=False)
    assert again.index_reused
    np.testing.assert_array_equal(Scope(path).read_map("again")[["x", "y"]], frame[["x", "y"]])
    below = project(path, "whole", seed=0, sample_threshold=5000, progress=False, quality=False)
    assert below.sample == 0 and int(Scope(path).read_map("whole")["fitted"].sum()) == 3000


def test_sample_is_uniform_sorted_and_seeded():
    rows = representative_sample(100_000, 5000, seed=1)
    assert len(np.unique(rows)) == 5000 and np.all(np.diff(rows) > 0)
    assert np.array_equal(rows, representative_sample(100_000, 5000, seed=1))
    assert abs(np.histogram(rows, bins=10, range=(0, 100_000))[0] - 500).max() < 100


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_cell_index_finds_nearly_all_exact_neighbours_whatever_the_threads(metric):
    import numba

    latents, _ = blobs(n=4000, dims=24, centres=6, seed=2)
    points = latents.reshape(4000, -1)
    reference, queries = points[:3000], points[3000:]
    cells = CellIndex.build(reference, metric, seed=0)
    found, distances = cells.search(queries, 10)
    exact, exact_distances = exact_search(queries, reference, 10, metric)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)])
    assert recall > 0.95
    hits = found[:, 0] == exact[:, 0]
    np.testing.assert_allclose(distances[hits, 0], exact_distances[hits, 0], rtol=1e-3, atol=1e-4)
    assert np.all(np.diff(distances, axis=1) >= 0)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        single = cells.search(queries, 10)
    finally:
        numba.set_num_threads(threads)
    np.testing.assert_array_equal(single[0], found)


def test_cuml_is_used_when_installed(big_scope, monkeypatch):
    """A stand-in for cuML's UMAP (PCA to 2-D) checks the plumbing; the real one needs a CUDA GPU."""
    from sklearn.decomposition import PCA

    calls = []

    class FakeUMAP:
        def __init__(self, **params):
            calls.append(("init", params))

        def fit_transform(self, reduced):
            calls.append(("fit", len(reduced)))
            self.pca = PCA(2, random_state=0).fit(reduced)
            return self.pca.transform(reduced)

        def transform(self, reduced):
            calls.append(("transform", len(reduced)))
            return self.pca.transform(reduced)

    manifold = types.ModuleType("cuml.manifold")
    manifold.UMAP = FakeUMAP
    cuml = types.ModuleType("cuml")
    cuml.manifold = manifold
    monkeypatch.setitem(sys.modules, "cuml", cuml)
    monkeypatch.setitem(sys.modules, "cuml.manifold", manifold)
    path, _ = big_scope
    summary = project(path, "gpu", seed=0, sample_threshold=1000, sample_size=600, progress=False, quality=False)
    assert summary.sample == 600
    assert calls[0][0] == "init" and calls[0][1]["n_neighbors"] == 15 and calls[1] == ("fit", 600)
    assert sum(n for kind, n in calls if kind == "transform") == 2400
    assert Scope(path).meta["maps"]["gpu"]["params"]["layout"] == "cuml"
    small = project(path, "cpu", seed=0, sample_threshold=None, progress=False, quality=False, pca_components=8)
    assert Scope(path).meta["maps"]["cpu"]["params"]["layout"] == "latentscope" and small.sample == 0
    monkeypatch.setitem(sys.modules, "cuml.manifold", None)
    with pytest.raises(InputError, match="cuML is not installed"):
        project(path, "x", use_cuml=True, progress=False)


def test_bad_sampling_options_say_why(big_scope):
    path, _ = big_scope
    with pytest.raises(InputError, match="sample size 5"):
        project(path, sample_size=5, progress=False)
    with pytest.raises(InputError, match="warm-start"):
        project(path, "w", warm_start="default", sample_threshold=1000, sample_size=600, progress=False)

"""The map (issue 4): UMAP projection with a cached kNN graph, transform, inverse_transform, quality, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from latentscope.cli import main as cli_main
from latentscope.errors import InputError, ScopeError
from latentscope.projection import LatentProjection, NeighbourIndex, load_projection, map_quality, nearest_images, place_new, project
from latentscope.projection.neighbors import exact_search
from latentscope.projection.reduce import fit_pca
from latentscope.scope import Scope

from conftest import REPO


def blobs(n=400, dims=24, centres=4, seed=0, spread=0.6):
    """Gaussian clusters along a curve: clusters plus a manifold, as N x 4 x 2 x 3 'latents'."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, centres, n)
    means = rng.normal(scale=4.0, size=(centres, dims))
    t = rng.uniform(0, 1, n)[:, None]
    curve = np.sin(3 * t * np.arange(1, dims + 1)) * 2.0
    data = means[labels] + curve + rng.normal(scale=spread, size=(n, dims))
    return data.reshape(n, 4, 2, 3).astype(np.float32), labels


@pytest.fixture(scope="module")
def fitted():
    latents, labels = blobs()
    original = latents.copy()
    model = LatentProjection(n_neighbors=10, random_state=0, pca_components=8).fit(latents)
    assert np.array_equal(latents, original), "fit must not modify the caller's latents"
    return model, latents, labels


@pytest.fixture(scope="module")
def digits_scope(tmp_path_factory, kl_folder) -> Path:
    """240 digits encoded with the tiny codec fixture, with labels from their folders, and a default map."""
    from latentscope.datasets import write_digits
    from latentscope.ingest import encode

    root = tmp_path_factory.mktemp("projection")
    images = write_digits(root / "digits", limit=240)
    encode(images, kl_folder, root / "scope", progress=False, device="cpu", thumbnails=False)
    project(root / "scope", "default", seed=0, progress=False)
    return root / "scope"


# ---------------------------------------------------------------------- the model


def test_same_seed_same_map_and_other_seed_other_map(fitted):
    model, latents, _ = fitted
    again = LatentProjection(n_neighbors=10, random_state=0, pca_components=8).fit_transform(latents)
    other = LatentProjection(n_neighbors=10, random_state=1, pca_components=8).fit_transform(latents)
    assert np.array_equal(model.embedding_, again)
    assert not np.allclose(model.embedding_, other)


def test_layout_does_not_depend_on_threads(fitted, monkeypatch):
    """Serial and threaded epochs, on any number of threads, give the same map bit for bit."""
    import numba

    from latentscope.projection import layout

    model, latents, _ = fitted
    monkeypatch.setattr(layout, "PARALLEL_MIN_EDGES", 0)
    maps = []
    for threads in (1, numba.config.NUMBA_NUM_THREADS):
        numba.set_num_threads(threads)
        maps.append(LatentProjection(n_neighbors=10, random_state=0, pca_components=8).fit_transform(latents))
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    assert np.array_equal(maps[0], maps[1]) and np.array_equal(maps[0], model.embedding_)


def test_map_keeps_clusters_and_neighbourhoods(fitted):
    model, latents, labels = fitted
    quality = map_quality(latents, model.embedding_, labels)
    assert quality["trustworthiness"] > 0.9
    assert quality["label_agreement_map"] > 0.9 and quality["label_agreement_chance"] < 0.3


def test_transform_puts_training_points_near_their_fitted_positions(fitted):
    model, latents, _ = fitted
    placed = model.transform(latents[:60])
    moved = np.linalg.norm(placed - model.embedding_[:60], axis=1)
    diameter = np.linalg.norm(np.ptp(model.embedding_, axis=0))
    assert np.median(moved) < 0.02 * diameter
    assert np.quantile(moved, 0.9) < 0.06 * diameter


def test_transform_places_new_latents_among_their_own_kind():
    latents, labels = blobs(n=440, seed=1)
    model = LatentProjection(n_neighbors=10, random_state=0, pca_components=8).fit(latents[:400])
    placed = model.transform(latents[400:])
    _, nearest = model.neighbours_on_map(placed, 1)
    assert (labels[:400][nearest[:, 0]] == labels[400:]).mean() > 0.9
    assert model.transform(latents[400]).shape == (1, 2)  # one latent without the batch axis


def test_inverse_transform_blends_real_latents_nearby(fitted):
    model, latents, labels = fitted
    flat = latents.reshape(len(latents), -1)
    between = (model.embedding_[:20] + model.embedding_[model.kneighbors(None, 1)[1][:20, 0]]) / 2
    for method in ("blend", "umap"):
        model.inverse_method = method
        back = model.inverse_transform(between).reshape(20, -1)
        nearest = exact_search(back, flat, 1)[0][:, 0]
        assert (labels[nearest] == labels[:20]).mean() >= 0.9, method
    model.inverse_method = "blend"
    far = model.embedding_.max(0) + 50.0  # far outside the map: still a blend of real latents
    back = model.inverse_transform(far).reshape(1, -1)
    _, on_map = model.neighbours_on_map(far[None], model.n_neighbors_)
    assert exact_search(back, flat, 1)[0][0, 0] in on_map[0]


def test_kneighbors_finds_the_training_point_itself_first(fitted):
    model, latents, _ = fitted
    distances, indices = model.kneighbors(latents[:5], 3)
    assert list(indices[:, 0]) == [0, 1, 2, 3, 4] and np.allclose(distances[:, 0], 0, atol=1e-3)
    distances, indices = model.kneighbors(None, 3)
    assert indices.shape == (len(latents), 3) and not (indices == np.arange(len(latents))[:, None]).any()


def test_save_and_load_rebuild_transform_without_pickle(fitted, tmp_path):
    model, latents, _ = fitted
    model.save(tmp_path / "proj")
    loaded = LatentProjection.load(tmp_path / "proj", latents=latents)
    assert np.array_equal(loaded.transform(latents[:10]), model.transform(latents[:10]))
    assert np.allclose(loaded.inverse_transform(model.embedding_[:3]), model.inverse_transform(model.embedding_[:3]))
    assert_no_pickle(tmp_path / "proj")


def test_three_dimensional_map():
    latents, _ = blobs(n=120)
    model = LatentProjection(n_components=3, n_neighbors=8, random_state=0, n_epochs=50).fit(latents)
    assert model.embedding_.shape == (120, 3)
    assert model.transform(latents[:4]).shape == (4, 3)
    assert model.inverse_transform(model.embedding_[:2]).shape == (2, 4, 2, 3)


def test_tiny_sets_work_and_too_tiny_sets_say_why():
    latents, _ = blobs(n=6)
    assert LatentProjection(random_state=0, n_epochs=20).fit_transform(latents).shape == (6, 2)
    with pytest.raises(InputError, match="at least 4"):
        LatentProjection().fit(latents[:3])


@pytest.mark.parametrize("params, message", [
    ({"n_components": 4}, "2 or 3"),
    ({"n_neighbors": 1}, "at least 2"),
    ({"min_dist": 2.0}, "between 0 and spread"),
    ({"metric": "hamming"}, "choose one of"),
    ({"init": "tsne"}, "choose one of"),
    ({"init": np.zeros((3, 2))}, "shape"),
    ({"inverse_method": "magic"}, "choose one of"),
])
def test_bad_parameters_raise_input_errors(params, message):
    latents, _ = blobs(n=50)
    with pytest.raises(InputError, match=message):
        LatentProjection(**params).fit(latents)


def test_unfitted_and_mismatched_inputs_raise_input_errors(fitted):
    with pytest.raises(InputError, match="not fitted"):
        LatentProjection().transform(np.zeros((2, 24)))
    model, _, _ = fitted
    with pytest.raises(InputError, match="fitted on latents of shape"):
        model.transform(np.zeros((2, 5)))
    with pytest.raises(InputError, match="M x 2"):
        model.inverse_transform(np.zeros((2, 3)))


# ---------------------------------------------------------------------- pieces


@pytest.mark.parametrize("metric", ["euclidean", "cosine", "correlation"])
def test_exact_search_matches_scikit_learn(metric):
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(0)
    data, queries = rng.normal(size=(300, 7)), rng.normal(size=(40, 7))
    expected_d, expected_i = NearestNeighbors(n_neighbors=5, metric=metric, algorithm="brute").fit(data).kneighbors(queries)
    indices, distances = exact_search(queries, data, 5, metric)
    assert np.array_equal(indices, expected_i)
    assert np.allclose(distances, expected_d, atol=1e-4)
    graph_i, graph_d = exact_search(data, data, 5, metric, same_set=True)
    assert np.array_equal(graph_i[:, 0], np.arange(300)) and (graph_d[:, 0] == 0).all()


def test_trustworthiness_equals_scikit_learn_on_all_points_and_estimates_it_on_a_sample(fitted):
    from sklearn.manifold import trustworthiness

    model, latents, _ = fitted
    flat = latents.reshape(len(latents), -1)
    full = map_quality(latents, model.embedding_, sample=10**6)
    assert not full["trustworthiness_sampled"]
    assert full["trustworthiness"] == pytest.approx(trustworthiness(flat, model.embedding_, n_neighbors=10), abs=1e-5)
    sampled = map_quality(latents, model.embedding_, sample=150)
    assert sampled["trustworthiness_sampled"] and sampled["trustworthiness_points"] == 150
    assert sampled["trustworthiness"] == pytest.approx(full["trustworthiness"], abs=0.02)


def test_incremental_pca_over_chunks_matches_in_memory_pca(tmp_path):
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(2000, 6)) @ rng.normal(size=(6, 64)) + 0.05 * rng.normal(size=(2000, 64))).astype(np.float16)
    np.save(tmp_path / "lat.npy", data)
    memmap = np.load(tmp_path / "lat.npy", mmap_mode="r")
    in_memory, reduced = fit_pca(memmap, 6)
    chunked, reduced_chunked = fit_pca(memmap, 6, memory_limit=1)  # forces IncrementalPCA over the memory map
    assert chunked.explained_variance_ratio.sum() == pytest.approx(in_memory.explained_variance_ratio.sum(), abs=1e-3)
    d_mem = np.linalg.norm(reduced[:50, None] - reduced[None, :50], axis=-1)
    d_inc = np.linalg.norm(reduced_chunked[:50, None] - reduced_chunked[None, :50], axis=-1)
    assert np.allclose(d_mem, d_inc, atol=0.05 * d_mem.max())


def test_neighbour_index_round_trips_through_npy_files(fitted, tmp_path):
    model, _, _ = fitted
    model.index_.save(tmp_path / "index")
    loaded, info = NeighbourIndex.load(tmp_path / "index")
    assert np.array_equal(loaded.knn_indices, model.index_.knn_indices) and info["metric"] == "euclidean"
    assert np.array_equal(loaded.pca.components, model.index_.pca.components)
    (tmp_path / "index" / "knn_indices.npy").write_bytes(b"garbage")
    with pytest.raises(ScopeError, match="unreadable neighbour index"):
        NeighbourIndex.load(tmp_path / "index")


@pytest.mark.slow
def test_nn_descent_graph_for_larger_sets(monkeypatch):
    from latentscope.projection import neighbors

    monkeypatch.setattr(neighbors, "EXACT_GRAPH_MAX", 100)
    latents, labels = blobs(n=600)
    model = LatentProjection(n_neighbors=10, random_state=0, pca_components=8).fit(latents)
    assert model.index_.method == "NN-descent"
    exact, _ = exact_search(model.index_.reduced, model.index_.reduced, 10, same_set=True)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, model.index_.knn_indices)])
    assert recall > 0.9
    assert map_quality(latents, model.embedding_, labels)["label_agreement_map"] > 0.9


# ---------------------------------------------------------------------- scopes


def assert_no_pickle(folder: Path) -> None:
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        assert path.suffix not in (".pkl", ".pickle", ".joblib"), path
        head = path.read_bytes()[:2]
        assert not (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")), f"{path} is a pickle"
        if path.suffix == ".npy":
            assert np.load(path, allow_pickle=False).dtype != object


def test_project_stores_map_parameters_quality_and_index(digits_scope):
    scope = Scope(digits_scope)
    frame = scope.read_map("default")
    ok = scope.ok_manifest()
    assert list(frame.columns) == ["id", "x", "y", "fitted"] and np.array_equal(frame["id"], ok["id"])
    entry = scope.meta["maps"]["default"]
    assert entry["params"]["n_neighbors"] == 15 and entry["params"]["random_state"] == 0
    assert entry["quality"]["trustworthiness"] > 0.8
    assert entry["quality"]["label_agreement_map"] > 2 * entry["quality"]["label_agreement_chance"]
    assert "umap-learn" in entry["versions"]
    index_info = json.loads((scope.path / "index" / entry["index"] / "index.json").read_text())
    assert index_info["pca_components"] == 50 and index_info["n_samples"] == len(ok)
    assert_no_pickle(scope.path)


def test_second_map_reuses_the_cached_graph_and_is_faster(digits_scope):
    first = project(digits_scope, "redo", seed=0, progress=False, rebuild_index=True, quality=False)
    folder = digits_scope / "index" / first.index
    graph_before = np.load(folder / "knn_indices.npy").copy()
    stamp = (folder / "knn_indices.npy").stat().st_mtime_ns
    second = project(digits_scope, "loose", seed=0, min_dist=0.5, warm_start="redo", progress=False, quality=False)
    assert not first.index_reused and second.index_reused and second.index == first.index
    assert (folder / "knn_indices.npy").stat().st_mtime_ns == stamp
    assert np.array_equal(np.load(folder / "knn_indices.npy"), graph_before)
    assert not any(step.startswith(("reducing", "finding")) for step in second.seconds)
    assert second.seconds["total"] < first.seconds["total"]
    assert Scope(digits_scope).meta["maps"]["loose"]["params"]["warm_start"] == "redo"


def test_same_seed_gives_the_same_stored_map(digits_scope):
    project(digits_scope, "again", seed=0, progress=False, quality=False)
    scope = Scope(digits_scope)
    assert scope.read_map("again")[["x", "y"]].equals(scope.read_map("default")[["x", "y"]])


def test_inverse_then_decode_gives_an_image_whose_nearest_real_neighbour_is_nearby_on_the_map(digits_scope, kl_folder):
    from latentscope.codec import Codec

    projection = load_projection(digits_scope)
    codec = Codec.from_pretrained(kl_folder, device="cpu")
    real = codec.decode_to_pixels(np.asarray(Scope(digits_scope).latents(), np.float32)).reshape(len(projection.ids_), -1)
    emb = projection.embedding_
    nearest_in_latents = projection.kneighbors(None, 1)[1][:, 0]
    picks = np.random.default_rng(0).choice(len(emb), 12, replace=False)
    locations = np.concatenate([
        (emb[picks] + emb[nearest_in_latents[picks]]) / 2,  # between two similar images
        emb[picks[:6]] + 0.1,  # next to an image
        [emb.max(0) + 5.0, emb.min(0) - 5.0],  # outside the map's hull
    ])
    decoded = codec.decode_to_pixels(projection.inverse_transform(locations).astype(np.float32)).reshape(len(locations), -1)
    nearest = exact_search(decoded.astype(np.float32), real.astype(np.float32), 1)[0][:, 0]
    _, around = projection.neighbours_on_map(locations)
    hits = [n in row for n, row in zip(nearest, around)]
    assert all(hits), hits


def test_load_projection_places_latents_and_names_nearest_images(digits_scope):
    projection = load_projection(digits_scope)
    scope = Scope(digits_scope)
    ids = scope.ok_manifest()["id"].to_numpy()[:4]
    neighbours, distances = nearest_images(projection, scope.latents_for_ids(ids), 3)
    assert np.array_equal(neighbours[:, 0], ids) and np.allclose(distances[:, 0], 0, atol=1e-2)
    placed = projection.transform(scope.latents_for_ids(ids))
    fitted = scope.read_map("default").set_index("id").loc[ids, ["x", "y"]].to_numpy()
    assert np.linalg.norm(placed - fitted, axis=1).max() < 0.1 * np.linalg.norm(np.ptp(projection.embedding_, axis=0))


def test_new_images_are_placed_on_an_existing_map(tmp_path, kl_folder):
    from latentscope.datasets import write_digits
    from latentscope.ingest import encode

    images = write_digits(tmp_path / "digits", limit=80)
    encode(images, kl_folder, tmp_path / "scope", progress=False, device="cpu", thumbnails=False)
    project(tmp_path / "scope", "default", seed=0, progress=False, quality=False)
    before = Scope(tmp_path / "scope").read_map("default")
    write_digits(images, limit=100)
    encode(images, kl_folder, tmp_path / "scope", progress=False, device="cpu", thumbnails=False)
    summary = place_new(tmp_path / "scope", "default", progress=False)
    after = Scope(tmp_path / "scope").read_map("default")
    assert summary.placed == 20 and len(after) == 100 and (~after["fitted"]).sum() == 20
    kept = after.set_index("id").loc[before["id"], ["x", "y"]].to_numpy()
    assert np.array_equal(kept, before[["x", "y"]].to_numpy())
    assert np.isfinite(after[["x", "y"]].to_numpy()).all()
    with pytest.raises(InputError, match="covers other images"):
        project(tmp_path / "scope", "warm", warm_start="default", progress=False)


def test_stale_indexes_are_removed_when_images_change(tmp_path, kl_folder):
    from latentscope.datasets import write_digits
    from latentscope.ingest import encode

    images = write_digits(tmp_path / "digits", limit=30)
    encode(images, kl_folder, tmp_path / "scope", progress=False, device="cpu", thumbnails=False)
    first = project(tmp_path / "scope", "default", seed=0, progress=False, quality=False, n_epochs=20)
    write_digits(images, limit=40)
    encode(images, kl_folder, tmp_path / "scope", progress=False, device="cpu", thumbnails=False)
    second = project(tmp_path / "scope", "default", seed=0, progress=False, quality=False, n_epochs=20)
    assert second.index != first.index and not second.index_reused
    assert sorted(p.name for p in (tmp_path / "scope" / "index").iterdir() if p.is_dir()) == [second.index]


# ---------------------------------------------------------------------- command line


def test_cli_prints_steps_timings_and_quality(digits_scope, capsys):
    assert cli_main(["project", str(digits_scope), "--name", "cli", "--min-dist", "0.3", "--warm-start", "default"]) == 0
    out = capsys.readouterr().out
    assert "map 'cli': 240 points in 2-D" in out and "reused" in out
    assert "laying out (warm start" in out and "trustworthiness (k=10)" in out and "kNN label agreement" in out


@pytest.mark.parametrize("args, message", [
    (["--n-neighbors", "0"], "must be at least 1"),
    (["--n-neighbors", "1"], "at least 2"),
    (["--min-dist", "-1"], "between 0 and spread"),
    (["--min-dist", "lots"], "invalid float value"),
    (["--min-dist", "3"], "between 0 and spread"),
    (["--metric", "hamming"], "invalid choice"),
    (["--dims", "4"], "invalid choice"),
    (["--warm-start", "nope"], "no map named 'nope'"),
    (["--name", "../escape"], "map name"),
    (["--epochs", "zero"], "not a whole number"),
])
def test_cli_bad_arguments_print_one_line_and_exit_2(digits_scope, capsys, args, message):
    code = _cli_exit(["project", str(digits_scope), "--no-quality", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err


def test_cli_on_a_folder_that_is_not_a_scope(tmp_path, capsys):
    assert _cli_exit(["project", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a scope" in err and len(err.splitlines()) == 1


def _cli_exit(argv) -> int:
    try:
        return cli_main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.slow
def test_numba_cache_makes_the_second_process_skip_compiling(digits_scope, tmp_path):
    """A fresh cache compiles once; the next process loads the compiled functions from it."""
    script = ("import json, sys; from latentscope.projection import project; "
              "s = project(sys.argv[1], 'startup', seed=0, progress=False, quality=False); print(json.dumps(s.seconds))")
    env = {**os.environ, "LATENTSCOPE_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    env.pop("NUMBA_CACHE_DIR", None)
    runs = [json.loads(subprocess.run([sys.executable, "-c", script, str(digits_scope)], env=env, capture_output=True,
                                      text=True, check=True).stdout.splitlines()[-1]) for _ in range(2)]
    assert "compiling UMAP (first run only)" in runs[0] and "loading UMAP" in runs[1]
    assert list((tmp_path / "cache" / "numba").rglob("*.nbi"))
    assert runs[1]["loading UMAP"] < runs[0]["compiling UMAP (first run only)"] / 2

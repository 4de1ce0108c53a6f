"""Walks: interpolants, data-aware routes, frame spacing, polish, export, sidecar replay, metrics and the CLI."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

import latentscope
from latentscope.cli import main as cli_main
from latentscope.errors import InputError
from latentscope.walks import Walker, WalkSpec, lerp, replay, slerp, walk
from latentscope.walks.graph import LatentGraph, nearest_rows
from latentscope.walks.interpolants import polyline
from latentscope.walks.metrics import evenness, gini, nearest_real, ssim, walk_metrics
from latentscope.walks.spacing import equal_arc_positions, share_out

N_IMAGES = 120
END_ATOL = 1e-6


# ---------------------------------------------------------------------------- fixtures: a scope and a denoiser


def walk_vae():
    """A tiny KL autoencoder with 8 x 8 latents for 32 x 32 images (a small UNet trains fast on those)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=1, latent_channels=4,
                         norm_num_groups=4, sample_size=32, scaling_factor=0.5, shift_factor=0.1)


def train_tiny_unet(latents: np.ndarray, steps: int = 80, seed: int = 0):
    """A small UNet trained briefly on the scope's latents, so DDIM inversion is not pure noise."""
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny kernels: threads only contend
    channels, size = latents.shape[1], latents.shape[-1]
    unet = UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=(16, 32), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8)
    scheduler = DDPMScheduler(num_train_timesteps=200, beta_schedule="squaredcos_cap_v2")
    data = torch.from_numpy(latents)
    optimiser = torch.optim.AdamW(unet.parameters(), 3e-3)
    for _ in range(steps):
        batch = data[torch.randint(0, len(data), (32,))]
        noise = torch.randn_like(batch)
        t = torch.randint(0, 200, (32,))
        loss = ((unet(scheduler.add_noise(batch, noise, t), t).sample - noise) ** 2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    torch.set_num_threads(threads)
    return unet.eval(), scheduler


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A latentscope-style model folder: vae/ (tiny KL) now, unet/ + scheduler/ added by ``scope_dir``."""
    folder = tmp_path_factory.mktemp("walk-model") / "model"
    walk_vae().save_pretrained(folder / "vae")
    return folder


@pytest.fixture(scope="module")
def scope_dir(tmp_path_factory, model_dir):
    from latentscope.datasets import digits_array

    pixels, labels = digits_array(32)
    out = tmp_path_factory.mktemp("walk-scope") / "digits.scope"
    latentscope.encode(pixels[:N_IMAGES], model_dir, out, labels=labels[:N_IMAGES], progress=False, thumbnails=False)
    latents = np.asarray(latentscope.Scope(out).latents(), np.float32)
    unet, scheduler = train_tiny_unet(latents)
    unet.save_pretrained(model_dir / "unet")
    scheduler.save_pretrained(model_dir / "scheduler")
    return out


@pytest.fixture(scope="module")
def walker(scope_dir):
    return Walker(scope_dir, device="cpu")


@pytest.fixture(scope="module")
def real(walker):
    return walker.real_latents()


def ids_of(walker, count):
    return walker.scope.ok_manifest()["id"].to_numpy()[:count]


# ---------------------------------------------------------------------------- interpolants


def test_lerp_and_slerp_hit_their_ends_exactly():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 8, 8)).astype(np.float32), rng.normal(size=(4, 8, 8)).astype(np.float32)
    for interpolate in (lerp, slerp):
        frames = interpolate(a, b, [0.0, 0.5, 1.0])
        assert frames.shape == (3, 4, 8, 8)
        np.testing.assert_allclose(frames[0], a, atol=1e-6)
        np.testing.assert_allclose(frames[-1], b, atol=1e-6)


def test_slerp_keeps_the_norm_of_gaussian_latents_and_lerp_does_not():
    rng = np.random.default_rng(1)
    a = rng.normal(size=256)
    b = rng.normal(size=256)
    b *= np.linalg.norm(a) / np.linalg.norm(b)
    u = np.linspace(0, 1, 21)
    slerp_norms = np.linalg.norm(slerp(a, b, u).astype(np.float64), axis=1)
    lerp_norms = np.linalg.norm(lerp(a, b, u).astype(np.float64), axis=1)
    np.testing.assert_allclose(slerp_norms, np.linalg.norm(a), rtol=1e-5)
    assert lerp_norms[10] < 0.8 * np.linalg.norm(a)  # the straight line cuts through the shell


def test_slerp_falls_back_to_lerp_when_nearly_parallel_or_opposite():
    a = np.ones(16, np.float32)
    for b in (2.0 * a + 1e-4, -a):
        np.testing.assert_allclose(slerp(a, b, [0.3]), lerp(a, b, [0.3]), atol=1e-6)
    assert np.isfinite(slerp(np.zeros(16), a, [0.5])).all()


def test_polyline_passes_through_every_point_at_its_arc_fraction():
    points = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 3.0]], np.float32)
    frames = polyline(points, [0.0, 0.25, 0.5, 1.0])
    np.testing.assert_allclose(frames, [[0, 0], [1, 0], [1, 1], [1, 3]], atol=1e-6)


# ---------------------------------------------------------------------------- spacing


def test_share_out_is_proportional_gives_each_segment_a_step_and_sums_up():
    assert share_out([1, 1, 2], 8) == [2, 2, 4]
    assert sum(share_out([5, 0, 0.1], 10)) == 10 and min(share_out([5, 0, 0.1], 10)) == 1
    with pytest.raises(InputError, match="steps"):
        share_out([1, 1, 1], 2)


def test_equal_arc_positions_invert_a_known_arc():
    u = np.linspace(0, 1, 401)
    arc = u**2  # image change grows along the segment
    positions = equal_arc_positions(u, np.diff(arc), 4)
    np.testing.assert_allclose(positions, np.sqrt([0, 0.25, 0.5, 0.75]), atol=2e-3)


# ---------------------------------------------------------------------------- kNN graph routes


def test_route_along_a_chain_visits_every_point_in_order():
    points = np.arange(10, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    graph = LatentGraph.build(points, k=2, power=2.0)
    assert graph.route(0, 9) == list(range(10))
    # an end that is not a real point joins through its nearest neighbours
    assert graph.route(np.full(3, -0.4, np.float32), np.full(3, 3.2, np.float32)) == [0, 1, 2, 3]


def test_route_bridges_clusters_the_knn_graph_leaves_apart():
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(0, 0.1, (20, 4)), rng.normal(50, 0.1, (20, 4))]).astype(np.float32)
    graph = LatentGraph.build(points, k=3)
    route = graph.route(0, 39)
    assert route[0] == 0 and route[-1] == 39 and len(route) >= 2


def test_duplicate_latents_still_connect():
    points = np.array([[0, 0], [0, 0], [1, 0], [2, 0]], np.float32)
    graph = LatentGraph.build(points, k=1)
    assert graph.route(0, 3)[-1] == 3


def test_nearest_rows_matches_brute_force():
    rng = np.random.default_rng(3)
    points, queries = rng.normal(size=(200, 12)), rng.normal(size=(7, 12))
    indices, distances = nearest_rows(queries, points, 5)
    brute = np.linalg.norm(queries[:, None] - points[None], axis=2)
    np.testing.assert_array_equal(indices, np.argsort(brute, axis=1)[:, :5])
    np.testing.assert_allclose(distances, np.sort(brute, axis=1)[:, :5], rtol=1e-5)


# ---------------------------------------------------------------------------- walks: ends are exact for every method


@pytest.mark.parametrize("method", ["lerp", "slerp", "noise-slerp", "data-path"])
def test_every_method_reproduces_the_end_latents(walker, real, method):
    ids = ids_of(walker, 60)
    result = walker.run(WalkSpec(ends=[int(ids[3]), int(ids[50])], method=method, steps=12, ddim_steps=6))
    assert result.latents.shape == (12, *real.shape[1:]) and result.pixels.shape == (12, 32, 32, 3)
    ends = walker.scope.latents_for_ids([ids[3], ids[50]])
    np.testing.assert_allclose(result.latents[0], ends[0], atol=END_ATOL)
    np.testing.assert_allclose(result.latents[-1], ends[1], atol=END_ATOL)
    assert result.knot_frames == [0, 11]
    assert not np.allclose(result.latents[5], ends[0])


@pytest.mark.parametrize("method", ["lerp", "slerp", "noise-slerp", "data-path"])
def test_multi_point_closed_loop_passes_through_every_point(walker, method):
    ids = [int(i) for i in ids_of(walker, 40)[[1, 17, 33]]]
    result = walker.run(WalkSpec(ends=ids, method=method, steps=15, loop=True, ddim_steps=4))
    assert len(result) == 15 and len(result.knot_frames) == 3
    np.testing.assert_allclose(result.latents[result.knot_frames], walker.scope.latents_for_ids(ids), atol=END_ATOL)
    assert result.segments[-1] == 2  # the last frames head back to the start, which is not repeated
    assert result.info["knots"] == [f"image {i}" for i in ids]


def test_noise_slerp_has_no_jump_next_to_its_ends_and_is_no_latent_blend(walker):
    """The inversion round-trip error is blended out along the walk rather than snapped at the ends."""
    ids = ids_of(walker, 60)
    spec = dict(ends=[int(ids[3]), int(ids[50])], steps=12)
    result = walker.run(WalkSpec(method="noise-slerp", ddim_steps=6, **spec))
    assert all(np.isfinite(result.info["inversion_error"]))
    steps = np.linalg.norm(np.diff(result.latents.reshape(12, -1), axis=0), axis=1)
    assert steps[0] < 3 * np.median(steps) and steps[-1] < 3 * np.median(steps)
    plain = walker.run(WalkSpec(method="lerp", **spec))
    assert np.abs(result.latents[6] - plain.latents[6]).mean() > 1e-3


def test_auto_noise_level_avoids_the_ill_conditioned_end_of_the_schedule(walker):
    """At t = 1 of a cosine schedule alpha_bar ~ 0 and an epsilon-model DDIM round trip explodes; the auto level does not."""
    from latentscope.walks.core import AUTO_NOISE_ALPHA, auto_noise_level

    level = auto_noise_level(walker.denoiser)
    assert walker.denoiser.prediction_type == "epsilon" and 0.5 < level < 1.0
    assert walker.denoiser.alphas_cumprod[walker.denoiser.timestep_for(level)] >= AUTO_NOISE_ALPHA
    ids = ids_of(walker, 60)
    spec = dict(ends=[int(ids[3]), int(ids[50])], method="noise-slerp", steps=3, ddim_steps=8)
    auto = walker.run(WalkSpec(**spec))
    full = walker.run(WalkSpec(noise_level=1.0, **spec))
    assert auto.info["noise_level"] == level
    assert max(auto.info["inversion_error"]) < 0.5, auto.info["inversion_error"]
    assert min(full.info["inversion_error"]) > 10 * max(auto.info["inversion_error"]), full.info["inversion_error"]


def test_auto_noise_level_is_pure_noise_for_v_prediction(walker):
    from latentscope.denoiser import Denoiser
    from latentscope.walks.core import auto_noise_level

    eps = walker.denoiser
    assert auto_noise_level(Denoiser(eps.unet, eps.alphas_cumprod, "v_prediction", device="cpu")) == 1.0


def test_data_path_only_visits_real_latents_as_waypoints(walker, real):
    ids = ids_of(walker, N_IMAGES)
    result = walker.run(WalkSpec(ends=[int(ids[0]), int(ids[99])], method="data-path", steps=24, neighbours=5))
    visited = result.waypoints[0]
    assert visited, "a route between two far digits goes through other digits"
    rows = walker.scope.rows_for_ids(visited)
    route = walker._route(walker.graph(5, 2.0), *[walker.resolve({"kind": "id", "id": int(i)}) for i in (ids[0], ids[99])])
    for point in route.points[1:-1]:
        assert np.min(np.abs(real - point).reshape(len(real), -1).max(axis=1)) == 0.0  # exactly a real latent
    np.testing.assert_array_equal(route.points[1:-1], real[rows])
    # every frame lies on a straight piece between consecutive waypoints
    frames = result.latents.reshape(len(result), -1).astype(np.float64)
    pieces = route.points.reshape(len(route.points), -1).astype(np.float64)
    for frame in frames:
        gaps = [_distance_to_segment(frame, pieces[i], pieces[i + 1]) for i in range(len(pieces) - 1)]
        assert min(gaps) < 1e-4


def _distance_to_segment(point, a, b):
    direction = b - a
    t = np.clip((point - a) @ direction / max(direction @ direction, 1e-30), 0, 1)
    return np.linalg.norm(point - (a + t * direction))


def test_data_path_stays_nearer_real_data_than_lerp(walker, real):
    ids = ids_of(walker, N_IMAGES)
    pairs = [(0, 99), (5, 77), (12, 60), (30, 110)]
    near = {}
    for method in ("lerp", "data-path"):
        near[method] = np.mean([walker.run(WalkSpec(ends=[int(ids[a]), int(ids[b])], method=method, steps=16)).metrics(real, use_lpips=False).summary["mean_nearest_real"] for a, b in pairs])
    assert near["data-path"] < near["lerp"]


def test_even_spacing_makes_step_distances_more_even_than_uniform_steps(walker):
    ids = ids_of(walker, N_IMAGES)
    for method in ("lerp", "data-path"):
        for a, b in [(0, 99), (21, 88)]:
            spec = dict(ends=[int(ids[a]), int(ids[b])], method=method, steps=12)
            uniform = walk_metrics(walker.run(WalkSpec(**spec)).pixels, use_lpips=False).summary
            even = walk_metrics(walker.run(WalkSpec(even=True, density=6, **spec)).pixels, use_lpips=False).summary
            assert even["evenness"] > uniform["evenness"], (method, a, b, uniform["evenness"], even["evenness"])
            assert even["max_rms_step"] <= uniform["max_rms_step"] + 1e-9


def test_direction_walk_moves_along_the_group_mean_difference(walker, real):
    ok = walker.scope.ok_manifest()
    start = int(ok["id"].iloc[4])
    result = walker.run(WalkSpec(ends=[start], method="lerp", steps=9, direction={"from": "label:0", "to": "label:1", "strength": (-1, 1)}))
    z = walker.scope.latents_for_ids([start])[0]
    d = real[ok["label"] == "1"].mean(axis=0) - real[ok["label"] == "0"].mean(axis=0)
    np.testing.assert_allclose(result.latents[0], z - d, atol=1e-5)
    np.testing.assert_allclose(result.latents[4], z, atol=1e-6)  # the image itself sits at strength 0
    np.testing.assert_allclose(result.latents[-1], z + d, atol=1e-5)
    np.testing.assert_allclose(result.latents[6], z + 0.5 * d, atol=1e-5)


def test_polish_changes_the_inside_keeps_the_knots_and_is_seeded(walker):
    ids = ids_of(walker, 60)
    spec = dict(ends=[int(ids[3]), int(ids[50])], method="slerp", steps=10, polish_steps=3)
    plain = walker.run(WalkSpec(**spec))
    polished = walker.run(WalkSpec(polish=0.3, seed=1, **spec))
    again = walker.run(WalkSpec(polish=0.3, seed=1, **spec))
    other = walker.run(WalkSpec(polish=0.3, seed=2, **spec))
    np.testing.assert_allclose(polished.latents[[0, -1]], plain.latents[[0, -1]], atol=END_ATOL)
    assert np.abs(polished.latents[5] - plain.latents[5]).mean() > 1e-3
    np.testing.assert_array_equal(polished.latents, again.latents)
    assert not np.allclose(polished.latents[5], other.latents[5])


def test_equal_norm_latent_ends_keep_their_norm_through_a_slerp_walk(model_dir):
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(2, 4, 8, 8)).astype(np.float32)
    b *= np.linalg.norm(a) / np.linalg.norm(b)
    result = walk(None, a, b, model=model_dir, method="slerp", steps=11, device="cpu")
    norms = np.linalg.norm(result.latents.reshape(11, -1), axis=1)
    np.testing.assert_allclose(norms, np.linalg.norm(a), rtol=1e-5)


def test_too_few_steps_for_the_points_is_an_input_error(walker):
    ids = [int(i) for i in ids_of(walker, 5)]
    with pytest.raises(InputError, match="steps"):
        walker.run(WalkSpec(ends=ids, method="lerp", steps=3))


# ---------------------------------------------------------------------------- ends: files and map points


def test_file_end_in_the_scope_resolves_to_that_image(walker):
    row = walker.scope.ok_manifest().iloc[7]
    end = walker.resolve({"kind": "file", "path": str(walker.scope.image_path(int(row["id"])))})
    assert end.row == int(row["row"])
    np.testing.assert_array_equal(end.latent, walker.scope.latents_for_ids([row["id"]])[0])


def test_scope_path_end_names_the_image_as_info_and_score_list_it(walker, tmp_path, monkeypatch):
    row = walker.scope.ok_manifest().iloc[5]
    monkeypatch.chdir(tmp_path)  # the scope's relative path is no file here
    spec = WalkSpec(ends=[int(ids_of(walker, 1)[0]), row["path"]], method="lerp", steps=4)
    assert spec.ends[1] == {"kind": "path", "path": row["path"]}
    end = walker.resolve(spec.ends[1])
    assert end.row == int(row["row"])
    np.testing.assert_array_equal(end.latent, walker.scope.latents_for_ids([row["id"]])[0])
    result = walker.run(spec)
    np.testing.assert_array_equal(result.knot_latents[1], end.latent)
    assert "/" in row["path"] and result.info["knots"][1] == row["path"]  # folder and name, as the scope lists it
    with pytest.raises(InputError, match="image path of the scope"):
        walker.resolve({"kind": "path", "path": "no/such/image.png"})


def test_new_file_end_is_prepared_like_the_scope_images(walker, tmp_path):
    from latentscope.images import prepare_image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    path = tmp_path / "new.png"
    image.save(path)
    end = walker.resolve({"kind": "file", "path": str(path)})
    assert end.row is None and len(end.spec["sha256"]) == 64
    prepared = prepare_image(path.read_bytes(), (32, 32), "center-crop", (255, 255, 255), thumb_size=None)
    np.testing.assert_allclose(end.latent, walker.codec.encode_pixels(prepared.pixels[None])[0], atol=1e-6)


def test_new_file_end_of_a_refined_scope_is_refined_like_its_images(model_dir, tmp_path):
    from latentscope.datasets import digits_array
    from latentscope.images import prepare_image

    pixels, _ = digits_array(32)
    out = tmp_path / "refined.scope"
    latentscope.encode(pixels[:6], model_dir, out, refine=3, progress=False, thumbnails=False)
    walker = Walker(out, device="cpu")
    path = tmp_path / "new.png"
    Image.fromarray(pixels[50]).save(path)
    end = walker.resolve({"kind": "file", "path": str(path)})
    prepared = prepare_image(path.read_bytes(), (32, 32), "center-crop", (255, 255, 255), thumb_size=None).pixels[None]
    np.testing.assert_allclose(end.latent, walker.codec.encode_pixels(prepared, refine=3)[0], atol=1e-5)
    assert not np.allclose(end.latent, walker.codec.encode_pixels(prepared)[0], atol=1e-3)


def test_refined_ends_start_and_stop_closer_to_the_real_images(walker, tmp_path):
    from latentscope.walks.ends import End, prepare_file

    first, last = map(int, ids_of(walker, 2))
    plain = walker.run(WalkSpec(ends=[first, last], method="lerp", steps=5))
    refined = walker.run(WalkSpec(ends=[first, last], method="lerp", steps=5, refine_ends=15))
    preprocess = walker.scope.meta["preprocess"]
    for frame, image_id in ((0, first), (-1, last)):
        image = prepare_file(walker.scope.image_path(image_id), preprocess, None)[0][0].astype(float)
        assert np.mean((refined.pixels[frame] - image) ** 2) < np.mean((plain.pixels[frame] - image) ** 2)
    assert refined.spec.refine_ends == 15 and WalkSpec.from_dict(refined.spec.to_dict()).refine_ends == 15
    latent_end = End(np.zeros(walker.latent_shape(), np.float32), {"kind": "latent"})
    assert walker.refined([latent_end], 15)[0] is latent_end  # no image to fit
    with pytest.raises(InputError, match="refine-ends"):
        WalkSpec(ends=[first, last], refine_ends=-1)


def test_file_end_is_recorded_with_its_hash_and_replays(walker, tmp_path):
    path = tmp_path / "new.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
    original = walker.run(WalkSpec(ends=[int(ids_of(walker, 5)[2]), str(path)], method="lerp", steps=6))
    sidecar = original.save(tmp_path / "f.png", metrics=False)
    recorded = json.loads(sidecar.read_text())["walk"]["ends"][1]
    assert recorded["kind"] == "file" and recorded["path"] == str(path) and len(recorded["sha256"]) == 64
    np.testing.assert_array_equal(replay(sidecar, device="cpu").pixels, original.pixels)


def test_map_point_ends_go_through_the_projections_inverse_transform(scope_dir, real):
    from sklearn.decomposition import PCA

    projection = PCA(2).fit(real.reshape(len(real), -1))
    walker = Walker(scope_dir, projection=projection, device="cpu")
    result = walker.run(WalkSpec(ends=["map:0.5,-0.25", 3], method="lerp", steps=6))
    expected = projection.inverse_transform([[0.5, -0.25]]).reshape(real.shape[1:])
    np.testing.assert_allclose(result.latents[0], expected, atol=1e-5)
    assert result.info["knots"][0].startswith("map default")


def test_cli_map_point_ends_load_the_scopes_map_projection(scope_dir, real, tmp_path, monkeypatch, capsys):
    """The seam to the projection module: ``load_projection(scope, name)`` returning an object with inverse_transform."""
    import importlib

    import pandas as pd
    from sklearn.decomposition import PCA

    pca = PCA(2).fit(real.reshape(len(real), -1))
    scope = latentscope.Scope(scope_dir)
    coords = pca.transform(real.reshape(len(real), -1))
    scope.write_map("pca", pd.DataFrame({"id": scope.ok_manifest()["id"], "x": coords[:, 0], "y": coords[:, 1]}), {"method": "pca"})
    calls = []

    def load_projection(scope, name):
        calls.append((scope.path, name))
        return pca

    # the real module with its loader replaced (a stand-in module would hide the CLI's other imports from it)
    monkeypatch.setattr(importlib.import_module("latentscope.projection"), "load_projection", load_projection)
    out = tmp_path / "m.gif"
    assert cli_main(["walk", str(scope_dir), "--from", "map:0.5,0.5", "--to", "3", "--map", "pca", "--method", "lerp",
                     "--steps", "5", "--out", str(out), "-q"]) == 0
    assert calls == [(scope.path, "pca")]
    recorded = json.loads((tmp_path / "m.gif.json").read_text())["walk"]["ends"][0]
    assert recorded == {"kind": "map", "map": "pca", "xy": [0.5, 0.5]}
    assert "map pca" in capsys.readouterr().out


def test_end_parsing_names_the_problem(tmp_path):
    from latentscope.walks.ends import parse_end, parse_group

    assert parse_end("12") == {"kind": "id", "id": 12} == parse_end("id:12") == parse_end(12)
    assert parse_end("map:1.5,-2", map_name="m") == {"kind": "map", "map": "m", "xy": [1.5, -2.0]}
    with pytest.raises(InputError, match="map:X,Y"):
        parse_end("map:1.5")
    assert parse_end(str(tmp_path / "missing.png")) == {"kind": "path", "path": (tmp_path / "missing.png").as_posix()}
    assert parse_group("label:cat") == {"label": "cat"} and parse_group("ids:1,2") == {"ids": [1, 2]}
    with pytest.raises(InputError, match="label:NAME"):
        parse_group("cat")


# ---------------------------------------------------------------------------- export and replay


@pytest.fixture(scope="module")
def morph(walker):
    ids = ids_of(walker, 60)
    return walker.run(WalkSpec(ends=[int(ids[3]), int(ids[50])], method="slerp", steps=10, even=True))


def test_gif_export_has_the_frames_size_and_timing(morph, tmp_path):
    sidecar = morph.save(tmp_path / "m.gif", fps=20, size=96)
    with Image.open(tmp_path / "m.gif") as gif:
        assert gif.n_frames == 10 and gif.size == (96, 96)
        assert gif.info["duration"] == 50 and gif.info.get("loop") == 0
        gif.seek(4)
        frame = np.asarray(gif.convert("RGB"))
    assert frame.shape == (96, 96, 3)
    assert sidecar.name == "m.gif.json" and json.loads(sidecar.read_text())["export"]["frames"] == 10


def test_gif_pingpong_and_play_once(morph, tmp_path):
    morph.save(tmp_path / "p.gif", pingpong=True, repeat=False)
    with Image.open(tmp_path / "p.gif") as gif:
        assert gif.n_frames == 18 and "loop" not in gif.info


def test_nearest_upscale_keeps_pixel_blocks(morph, tmp_path):
    morph.save(tmp_path / "big.png", size=128, layout="strip", gap=0)
    strip = np.asarray(Image.open(tmp_path / "big.png"))
    assert strip.shape == (128, 10 * 128, 3)
    np.testing.assert_array_equal(strip[::4, :128:4], morph.pixels[0])


def test_mp4_export_opens_with_the_right_frame_count_and_size(morph, tmp_path):
    import imageio_ffmpeg

    morph.save(tmp_path / "m.mp4", fps=10, size=(66, 95))
    reader = imageio_ffmpeg.read_frames(str(tmp_path / "m.mp4"))
    meta = next(reader)
    frames = list(reader)
    assert meta["size"] == (96, 66)  # odd width padded to even for yuv420p
    assert len(frames) == 10 and meta["fps"] == pytest.approx(10)


def test_contact_sheet_layout(morph, tmp_path):
    morph.save(tmp_path / "sheet.png", columns=4, gap=2)
    sheet = np.asarray(Image.open(tmp_path / "sheet.png"))
    assert sheet.shape == (3 * 32 + 2 * 2, 4 * 32 + 3 * 2, 3)
    np.testing.assert_array_equal(sheet[34:66, 34:66], morph.pixels[5])
    assert (sheet[32:34] == 255).all()


def test_unknown_output_type_is_refused(morph, tmp_path):
    with pytest.raises(InputError, match=".gif, .mp4 or .png"):
        morph.save(tmp_path / "m.jpg")


@pytest.mark.parametrize("options", [
    dict(method="slerp", even=True),
    dict(method="data-path", loop=True),
    dict(method="noise-slerp", polish=0.2, ddim_steps=4, seed=3),
    dict(method="lerp", direction={"from": "ids:1,2", "to": "label:3", "strength": (0, 2)}),
])
def test_sidecar_reproduces_the_same_frames(walker, tmp_path, options):
    ids = [int(i) for i in ids_of(walker, 60)[[3, 30, 50]]]
    ends = ids[:1] if "direction" in options else ids
    original = walker.run(WalkSpec(ends=ends, steps=10, **options))
    sidecar = original.save(tmp_path / "walk.gif")
    payload = json.loads(sidecar.read_text())
    assert payload["walk"]["method"] == options["method"] and payload["scope"] == str(walker.scope.path)
    assert payload["model"]["fingerprint"] == walker.codec.fingerprint
    again = replay(sidecar, device="cpu")
    np.testing.assert_array_equal(again.pixels, original.pixels)
    np.testing.assert_allclose(again.latents, original.latents, atol=1e-6)


def test_knn_table_is_cached_in_the_scope(walker, scope_dir):
    from latentscope.walks.knn_cache import cached_knn_table

    first = cached_knn_table(walker.scope, walker.real_latents(), 4)
    assert (scope_dir / "cache" / "walk-knn-k4.indices.npy").exists()
    second = cached_knn_table(walker.scope, walker.real_latents(), 4)
    np.testing.assert_array_equal(first[0], second[0])


# ---------------------------------------------------------------------------- metrics


def test_gini_and_evenness_of_known_distributions():
    assert gini([1, 1, 1, 1]) == pytest.approx(0.0)
    assert gini([0, 0, 0, 4]) == pytest.approx(0.75)
    assert evenness([2, 2]) == pytest.approx(1.0) and evenness([0, 0]) == pytest.approx(1.0)


def test_ssim_matches_the_reference_implementation():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    y = np.clip(x.astype(int) + rng.integers(-40, 40, x.shape), 0, 255).astype(np.uint8)
    reference = metrics.structural_similarity(x, y, channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=True, data_range=255)
    assert ssim(x, y) == pytest.approx(reference, abs=1e-6)
    assert ssim(x, x) == pytest.approx(1.0)


def test_walk_metrics_measure_steps_and_distance_to_data(morph, real):
    summary = morph.metrics(real).summary
    assert summary["frames"] == 10
    assert 0 < summary["mean_rms_step"] <= summary["max_rms_step"]
    assert 0 < summary["evenness"] <= 1
    assert summary["mean_nearest_real"] > 0
    rows, distances = nearest_real(real[[4, 9]], real)
    np.testing.assert_array_equal(rows, [4, 9])
    np.testing.assert_allclose(distances, 0, atol=1e-6)


# ---------------------------------------------------------------------------- CLI


def test_cli_walk_writes_output_sidecar_and_summary(scope_dir, tmp_path, capsys):
    out = tmp_path / "morph.gif"
    code = cli_main(["walk", str(scope_dir), "--from", "3", "--via", "20", "--to", "40", "--method", "lerp", "--steps", "12",
                     "--out", str(out), "--even", "--size", "64", "--fps", "8", "-q"])
    printed = capsys.readouterr().out
    assert code == 0 and "12 frames" in printed and "evenness" in printed
    with Image.open(out) as gif:
        assert gif.n_frames == 12 and gif.size == (64, 64)
    replayed = tmp_path / "again.gif"
    assert cli_main(["walk", "--replay", str(out) + ".json", "--out", str(replayed), "-q"]) == 0
    assert replayed.read_bytes() == out.read_bytes()


def test_cli_direction_walk(scope_dir, tmp_path, capsys):
    out = tmp_path / "d.png"
    assert cli_main(["walk", str(scope_dir), "--from", "5", "--direction", "label:0", "label:1", "--strength", "-1", "1",
                     "--steps", "5", "--out", str(out), "--layout", "strip", "-q"]) == 0
    assert Image.open(out).size == (5 * 32 + 4 * 2, 32)


@pytest.mark.parametrize("args, message", [
    (["--from", "3", "--to", "99999"], "no image with id 99999"),
    (["--from", "3"], "give --to"),
    (["--from", "3", "--to", "4", "--method", "warp"], "invalid choice"),
    (["--from", "3", "--to", "4", "--steps", "0"], "must be at least 1"),
    (["--from", "3", "--to", "map:1,2"], "no such map"),
    (["--from", "3", "--to", "nothere.png"], "existing image file"),
    (["--from", "3", "--direction", "label:0", "label:nope"], "no encoded image has that label"),
    (["--from", "3", "--to", "4", "--out", "x.jpg"], "unknown output type"),
])
def test_cli_errors_are_one_line_with_exit_2(scope_dir, tmp_path, capsys, args, message):
    argv = ["walk", str(scope_dir), *args]
    if "--out" not in args:
        argv += ["--out", str(tmp_path / "x.gif")]
    assert run_cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def run_cli(argv) -> int:
    """Exit status of the CLI, whether it returns it or argparse exits with it."""
    try:
        return cli_main(argv)
    except SystemExit as exit_info:
        return int(exit_info.code)


def test_cli_noise_slerp_without_a_denoiser_says_so(tmp_path, kl_folder, capsys):
    from latentscope.datasets import digits_array

    pixels, _ = digits_array(32)
    scope = tmp_path / "plain.scope"
    latentscope.encode(pixels[:6], kl_folder, scope, progress=False, thumbnails=False)
    code = cli_main(["walk", str(scope), "--from", "0", "--to", "5", "--method", "noise-slerp", "--out", str(tmp_path / "x.gif")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no unet/ folder" in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------------------- example


def test_morph_example_runs_quick(scope_dir, model_dir, tmp_path):
    from test_examples import run_example

    out = run_example("morph.py", "--model", str(model_dir), "--out", str(tmp_path / "morph"))
    assert "noise-slerp" in out and "slerp+even" in out and "identical frames" in out
    plain, fitted = map(float, re.search(r"squared error: ([\d.]+) plain, ([\d.]+) with --refine-ends 25", out).groups())
    assert fitted < plain
    assert (tmp_path / "morph" / "data-path.gif.json").exists() and (tmp_path / "morph" / "direction.png").exists()

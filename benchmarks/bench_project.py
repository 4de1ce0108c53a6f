"""Benchmark `latentscope project` against plain `umap.UMAP().fit_transform` (issue 4).

Data: synthetic latents with known structure (see :func:`structured_latents`), stored as a scope
(float16 latents.npy + manifest with labels), for two cases: 70,000 latents of shape 4x8x8 and 5,000 of
shape 4x32x32.

In one process, after compiling everything once on a small problem (both sides "warm"), for each case:

1. plain:  ``umap.UMAP().fit_transform(latents as float32 N x D)``                      (timed)
2. first:  ``project(scope, "default", seed=0)``: PCA-50, kNN graph (cached), layout, quality
           report, storing the map                                                     (timed)
3. second: ``project(scope, "second", min_dist=0.25, warm_start="default")``: reuses the cached
           graph, starts from the first map                                            (timed)
4. plain2: ``umap.UMAP(min_dist=0.25).fit_transform(...)``, the reference for the second map (timed)

Ratios are ours / plain (first) and ours / plain2 (second). Trustworthiness (k=10) of every map is
measured by the same function on the same sample of query points, each ranked against all points.

Then, in fresh processes: the start-up saving of the numba cache (the same `project` run with an
empty cache directory, then again with the cache it filled), and `inverse_transform` measured both ways
(blend vs umap-learn's method) on held-out latents.

    python benchmarks/bench_project.py              # both cases, writes the RESULTS.md section
    python benchmarks/bench_project.py --quick      # small cases, prints only
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import command_line, machine_line, write_section  # noqa: E402

from latentscope.projection import LatentProjection, map_quality, project  # noqa: E402
from latentscope.projection.quality import DEFAULT_SAMPLE  # noqa: E402
from latentscope.projection.jit import load_umap  # noqa: E402
from latentscope.scope import Scope  # noqa: E402

CASES = {"70k-4x8x8": (70000, (4, 8, 8)), "5k-4x32x32": (5000, (4, 32, 32))}
QUICK = {"70k-4x8x8": (6000, (4, 8, 8)), "5k-4x32x32": (1500, (4, 32, 32))}
SECOND_MIN_DIST = 0.25


# ---------------------------------------------------------------------- data


def structured_latents(n: int, shape: tuple[int, int, int], n_classes: int = 10, noise: float = 0.1, seed: int = 0):
    """Latents rendered from class templates: clusters, each a smooth nonlinear 5-parameter manifold.

    Each class has a template: a smooth random field of shape C x 2h x 2w (Gaussian-filtered noise,
    unit variance). A latent of that class is the template resampled on an h x w grid that is
    shifted, rotated and scaled, times a brightness factor (5 continuous parameters), plus Gaussian
    noise of standard deviation ``noise``. Like real autoencoder latents, the values are spatially
    smooth, variance spreads over many principal components, and neighbours are meaningful:
    same class and similar pose. Labels are the classes.
    """
    from scipy.ndimage import gaussian_filter, map_coordinates

    channels, h, w = shape
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    out = np.empty((n, channels, h, w), np.float32)
    grid_y, grid_x = np.mgrid[0:h, 0:w].astype(np.float64)
    grid_y -= (h - 1) / 2
    grid_x -= (w - 1) / 2
    for cls in range(n_classes):
        field = rng.normal(size=(channels, 2 * h, 2 * w))
        field = np.stack([gaussian_filter(f, sigma=max(h, w) / 6, mode="wrap") for f in field])
        field /= field.std()
        members = np.flatnonzero(labels == cls)
        m = len(members)
        shift = rng.uniform(-0.5, 0.5, size=(m, 2)) * np.array([h, w])
        scale = rng.uniform(0.7, 1.4, m)[:, None, None]
        theta = rng.uniform(-0.6, 0.6, m)[:, None, None]
        gain = rng.uniform(0.6, 1.4, m)[:, None, None]
        ys = (np.cos(theta) * grid_y - np.sin(theta) * grid_x) * scale + h + shift[:, 0, None, None]
        xs = (np.sin(theta) * grid_y + np.cos(theta) * grid_x) * scale + w + shift[:, 1, None, None]
        for c in range(channels):
            out[members, c] = gain * map_coordinates(field[c], [ys, xs], order=1, mode="grid-wrap")
    out += rng.normal(scale=noise, size=out.shape).astype(np.float32)
    return out, labels


def scope_from_latents(path: Path, latents: np.ndarray, labels: np.ndarray) -> Scope:
    """A scope holding given latents (no images: the benchmark only projects)."""
    shutil.rmtree(path, ignore_errors=True)
    scope = Scope.create(path, {"model": {"latent_shape": list(latents.shape[1:])}, "images_root": "images"})
    n = len(latents)
    manifest = pd.DataFrame({
        "id": np.arange(n), "path": [f"{i}.png" for i in range(n)],
        "sha256": [hashlib.sha256(row.tobytes()).hexdigest() for row in latents.astype(np.float16)],
        "width": 64, "height": 64, "status": "ok", "error": "", "label": labels.astype(str), "row": np.arange(n),
    })
    latents_next = path / "latents.npy.next"
    with open(latents_next, "wb") as handle:
        np.save(handle, latents.astype(np.float16))
    scope.commit(manifest, latents_next)
    return scope


# ---------------------------------------------------------------------- timing


def timed(function, *args, **kwargs):
    start, cpu = time.perf_counter(), time.process_time()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start, time.process_time() - cpu


def plain_umap(flat: np.ndarray, **params) -> np.ndarray:
    umap = load_umap()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return umap.UMAP(**params).fit_transform(flat)


def warm_up(work: Path) -> None:
    """Compile both sides once (plain UMAP's NN-descent needs >= 4096 points to be exercised)."""
    latents, labels = structured_latents(9000, (4, 8, 8), seed=99)
    plain_umap(latents.reshape(len(latents), -1), n_epochs=10)
    scope = scope_from_latents(work / "warm", latents, labels)
    project(scope, "default", n_epochs=10, progress=False, quality=False)


def run_case(name: str, n: int, shape, work: Path, quality_sample: int) -> dict:
    latents, labels = structured_latents(n, shape)
    scope = scope_from_latents(work / name, latents, labels)
    stored = scope.latents()  # what both sides see: the float16 values in the scope
    flat = np.asarray(stored, np.float32).reshape(n, -1)
    row = {"case": name, "n": n, "shape": "x".join(map(str, shape))}
    plain, row["plain_s"], row["plain_cpu"] = timed(plain_umap, flat)
    first, row["first_s"], row["first_cpu"] = timed(project, scope, "default", seed=0, progress=False, quality=False)
    second, row["second_s"], row["second_cpu"] = timed(
        project, scope, "second", seed=0, min_dist=SECOND_MIN_DIST, warm_start="default", progress=False, quality=False)
    plain2, row["plain2_s"], row["plain2_cpu"] = timed(plain_umap, flat, min_dist=SECOND_MIN_DIST)
    row["first_steps"], row["second_steps"] = first.seconds, second.seconds
    row["index_reused"] = second.index_reused
    row["pca_variance"] = json.loads((scope.path / "index" / first.index / "index.json").read_text()).get("pca_explained_variance")
    maps = {"plain": plain, "first": _coords(scope, "default"), "second": _coords(scope, "second"), "plain2": plain2}
    for key, coords in maps.items():
        quality = map_quality(stored, coords, labels.astype(str), sample=quality_sample, seed=1)
        row[f"{key}_trust"] = quality["trustworthiness"]
        row[f"{key}_labels"] = quality["label_agreement_map"]
    # the report `project` adds by default (1,000 query points), timed on its own
    row["report_s"] = timed(map_quality, stored, maps["first"], labels.astype(str), sample=DEFAULT_SAMPLE)[1]
    row["trust_points"] = min(quality_sample, n)
    row["first_ratio"] = row["first_s"] / row["plain_s"]
    row["second_ratio"] = row["second_s"] / row["plain2_s"]
    row["first_ratio_report"] = (row["first_s"] + row["report_s"]) / row["plain_s"]
    row["second_ratio_report"] = (row["second_s"] + row["report_s"]) / row["plain2_s"]
    print(json.dumps(row, default=str), flush=True)
    return row


def _coords(scope: Scope, name: str) -> np.ndarray:
    frame = scope.read_map(name)
    return frame[["x", "y"]].to_numpy(np.float32)


# ---------------------------------------------------------------------- start-up in fresh processes

STARTUP_SCRIPT = """
import json, sys, time
start = time.perf_counter()
from latentscope.projection import project
summary = project(sys.argv[1], sys.argv[2], seed=0, quality=False, progress=False, **json.loads(sys.argv[3]))
print(json.dumps({"total": time.perf_counter() - start, "steps": summary.seconds}))
"""


def fresh_process(scope: Path, name: str, cache: Path, **params) -> dict:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    result = subprocess.run([sys.executable, "-c", STARTUP_SCRIPT, str(scope), name, json.dumps(params)],
                            capture_output=True, text=True, env=env, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def startup(work: Path, n: int, shape) -> dict:
    """The same first map in a new process with an empty numba cache, then with the cache it filled."""
    latents, labels = structured_latents(n, shape, seed=5)
    scope = scope_from_latents(work / f"startup-{n}", latents, labels).path
    cache = work / f"numba-cache-{n}"
    shutil.rmtree(cache, ignore_errors=True)
    cold = fresh_process(scope, "cold", cache, rebuild_index=True)
    warm = fresh_process(scope, "warm", cache, rebuild_index=True)
    repeat = fresh_process(scope, "repeat", cache, min_dist=SECOND_MIN_DIST, warm_start="warm")
    out = {"n": n, "shape": "x".join(map(str, shape)), "cold": cold, "warm": warm, "repeat": repeat}
    print(json.dumps(out), flush=True)
    return out


# ---------------------------------------------------------------------- inverse_transform: blend vs umap


def inverse_study(n: int, shape, seed: int = 3) -> dict:
    """Fit on 90 % of the latents; map held-out latents with transform, back with both inverses."""
    latents, labels = structured_latents(n, shape, seed=seed)
    flat = latents.reshape(n, -1)
    rng = np.random.default_rng(0)
    held = rng.choice(n, n // 10, replace=False)
    train = np.setdiff1d(np.arange(n), held)
    model = LatentProjection(random_state=0).fit(latents[train])
    train_flat = flat[train]
    placed = model.transform(latents[held])
    nn_dist = _nearest(flat[held], train_flat)[1]
    lo, hi = model.embedding_.min(0), model.embedding_.max(0)
    angle = np.linspace(0, 2 * np.pi, 200, endpoint=False)
    centre, half = (lo + hi) / 2, (hi - lo) / 2
    outside = centre + 1.25 * half * np.stack([np.cos(angle), np.sin(angle)], 1) / np.abs(np.stack([np.cos(angle), np.sin(angle)], 1)).max(1, keepdims=True)
    typical = np.median(_nearest(train_flat[:2000], train_flat, skip_self=True)[1])
    out = {"n": n, "shape": "x".join(map(str, shape)), "held_out": len(held)}
    for method in ("blend", "umap"):
        model.inverse_method = method
        (inside, seconds, _) = timed(model.inverse_transform, placed)
        inside = inside.reshape(len(held), -1)
        nearest_row, _ = _nearest(inside, train_flat)
        beyond = model.inverse_transform(outside).reshape(len(outside), -1)
        out[method] = {
            "error_vs_nn": float(np.median(np.linalg.norm(inside - flat[held], axis=1) / nn_dist)),
            "label_kept": float((labels[train][nearest_row] == labels[held]).mean()),
            "outside_realness": float(np.median(_nearest(beyond, train_flat)[1]) / typical),
            "outside_finite": bool(np.isfinite(beyond).all()),
            "ms_per_point": 1000 * seconds / len(held),
        }
    out["transform_label_agreement"] = float((labels[train][_map_nearest(model, placed)] == labels[held]).mean())
    print(json.dumps(out), flush=True)
    return out


def _nearest(queries: np.ndarray, reference: np.ndarray, skip_self: bool = False):
    from latentscope.projection.neighbors import exact_search

    indices, distances = exact_search(queries, reference, 2 if skip_self else 1, "euclidean")
    column = 1 if skip_self else 0
    return indices[:, column], distances[:, column]


def _map_nearest(model: LatentProjection, points: np.ndarray) -> np.ndarray:
    return model.neighbours_on_map(points, 1)[1][:, 0]


# ---------------------------------------------------------------------- report


def to_markdown(rows: list[dict], starts: list[dict], inverse: dict, quality_sample: int) -> str:
    lines = [
        "## Projection (issue 4)",
        "",
        f"Command: `{command_line()}`  ",
        f"Machine: {machine_line()}",
        "",
        "Data: synthetic latents rendered from 10 class templates (smooth random C x 2h x 2w fields); each latent is "
        "its class template resampled on an h x w grid under a random shift, rotation, scale and brightness "
        "(5 continuous parameters), plus Gaussian noise (sd 0.1, template sd 1). So the set is 10 clusters, each a "
        "smooth nonlinear 5-parameter manifold, spatially smooth like real autoencoder latents, with class labels; "
        "stored in a scope as float16 like encoded images. Both sides get the same float16 values.",
        "",
        "Wall time in one process after compiling both sides on a small problem; each pair runs back to back. "
        "Our times are whole `project(..., quality=False)` calls: PCA, kNN graph (cached in the scope), layout, "
        "writing the map. The quality report `project` adds by default (trustworthiness on 1,000 query points, "
        "label agreement) is timed on its own and shown as the ratio in brackets. Plain UMAP runs on all threads "
        "unseeded; ours is seeded (reproducible) and threaded.",
        f"Trustworthiness (k=10): {quality_sample:,} random query points ranked against all points, same "
        "points for every map (an unbiased estimate of the full value).",
        "",
        "| case | plain UMAP s | first map s | **ratio** (<= 0.6) [with report] | plain UMAP(min_dist=0.25) s | second map s | **ratio** (<= 0.3) [with report] | trust plain / first | trust plain2 / second | label agreement plain / first / second |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']:,} x {r['shape']} | {r['plain_s']:.1f} | {r['first_s']:.1f} | **{r['first_ratio']:.2f}** "
            f"[{r['first_ratio_report']:.2f}] | {r['plain2_s']:.1f} | {r['second_s']:.1f} | **{r['second_ratio']:.2f}** "
            f"[{r['second_ratio_report']:.2f}] | "
            f"{r['plain_trust']:.4f} / {r['first_trust']:.4f} | {r['plain2_trust']:.4f} / {r['second_trust']:.4f} | "
            f"{r['plain_labels']:.3f} / {r['first_labels']:.3f} / {r['second_labels']:.3f} |"
        )
    lines += ["", "Where the time goes (seconds):", ""]
    for r in rows:
        first = ", ".join(f"{k} {v:.1f}" for k, v in r["first_steps"].items())
        second = ", ".join(f"{k} {v:.1f}" for k, v in r["second_steps"].items())
        lines.append(f"* {r['n']:,} x {r['shape']} (PCA-50 keeps {100 * r['pca_variance']:.1f} % of the variance): "
                     f"first map: {first}. Second map (graph reused: {r['index_reused']}): {second}. "
                     f"Quality report: {r['report_s']:.1f}.")
    lines += ["", "Start-up in a fresh process (`project` with `NUMBA_CACHE_DIR` empty, then filled by that run):", "",
              "| set | empty cache s | filled cache s | saving s | 'compiling UMAP' step -> 'loading UMAP' step | repeat map (graph cached) s |",
              "|---|---:|---:|---:|---:|---:|"]
    for s in starts:
        cold_step = s["cold"]["steps"].get("compiling UMAP (first run only)", float("nan"))
        warm_step = s["warm"]["steps"].get("loading UMAP", float("nan"))
        lines.append(f"| {s['n']:,} x {s['shape']} | {s['cold']['total']:.1f} | {s['warm']['total']:.1f} | "
                     f"{s['cold']['total'] - s['warm']['total']:.1f} | {cold_step:.1f} -> {warm_step:.1f} | {s['repeat']['total']:.1f} |")
    if inverse:
        lines += ["", f"`inverse_transform` on {inverse['held_out']} held-out latents ({inverse['n']:,} x {inverse['shape']}, "
                  "map fitted on the rest; each placed with `transform`, then mapped back):", "",
                  "| method | error / distance to nearest training latent (median) | class of nearest real latent kept | "
                  "outside the hull: distance to nearest real latent / typical NN distance | ms per point |",
                  "|---|---:|---:|---:|---:|"]
        for method in ("blend", "umap"):
            m = inverse[method]
            lines.append(f"| {method} | {m['error_vs_nn']:.2f} | {100 * m['label_kept']:.1f} % | "
                         f"{m['outside_realness']:.2f}{'' if m['outside_finite'] else ' (non-finite values)'} | {m['ms_per_point']:.2f} |")
        lines.append(f"\n`transform` of the held-out latents: the nearest training point on the map has the same class "
                     f"for {100 * inverse['transform_label_agreement']:.1f} % of them.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small cases, print only")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--quality-sample", type=int, default=2000)
    parser.add_argument("--skip-startup", action="store_true")
    parser.add_argument("--skip-inverse", action="store_true")
    args = parser.parse_args()
    cases = QUICK if args.quick else CASES
    work = Path(tempfile.mkdtemp(prefix="bench-project-"))
    try:
        warm_up(work)
        rows = [run_case(name, *cases[name], work, args.quality_sample) for name in args.cases.split(",")]
        starts = [] if args.skip_startup else [startup(work, *size) for size in ((2000, (4, 32, 32)), (20000, (4, 8, 8)))]
        inverse = {} if args.skip_inverse else inverse_study(*cases["5k-4x32x32"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    markdown = to_markdown(rows, starts, inverse, args.quality_sample)
    print(markdown)
    if not args.quick:
        write_section("project", markdown)


if __name__ == "__main__":
    main()

"""Walks benchmark: smoothness of each method over random pairs, and the time to make a decoded morph.

    python benchmarks/bench_walks.py                         # builtin:digits, 100 pairs, 24 frames
    python benchmarks/bench_walks.py --model path/to/model   # any model folder with vae/ (+ unet/ for noise-slerp)
    python benchmarks/bench_walks.py --quick                 # 10 pairs, for a smoke run

Encodes the 1,797 scikit-learn digits (32 x 32) with the model into a scope
(or reuses --scope), draws random pairs of images (seeded), and for each walk
variant reports the mean over pairs of

* RMS pixel change per step (mean and max) and evenness = 1 - Gini of the steps,
* the same evenness measured with 1 - SSIM,
* distance of the frames to the nearest real latent, relative to the typical
  real-to-real nearest-neighbour distance (1.0 = as far out as a real image
  is from its neighbour), mean and max over frames,
* seconds per walk.

Timing: a warm walker (model loaded once, as in the dashboard) produces a
24-frame decoded morph; the bare decode of 24 latents in the same run is the
reference, so the ratio is robust to a busy machine. A cold ``latentscope walk``
(process start, model load, export) is timed once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import latentscope
from latentscope.codec import locate_component
from latentscope.datasets import digits_array
from latentscope.errors import LatentscopeError, ModelError
from latentscope.walks import Walker, WalkSpec
from latentscope.walks.metrics import lpips_model, typical_spacing, walk_metrics

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import command_line, machine_line, write_section  # noqa: E402

COLUMNS = ("mean_rms_step", "max_rms_step", "evenness", "evenness_dssim", "mean_nearest_real_relative", "max_nearest_real_relative", "seconds")


def variants(has_unet: bool, ddim_steps: int, noise_level: float) -> list[tuple[str, dict]]:
    rows = [
        ("lerp", {"method": "lerp"}),
        ("lerp + even", {"method": "lerp", "even": True}),
        ("slerp", {"method": "slerp"}),
        ("slerp + even", {"method": "slerp", "even": True}),
        ("data-path", {"method": "data-path"}),
        ("data-path + even", {"method": "data-path", "even": True}),
        ("data-path (power 1)", {"method": "data-path", "edge_power": 1.0}),
    ]
    if has_unet:
        rows += [
            ("slerp + polish 0.2", {"method": "slerp", "polish": 0.2}),
            ("noise-slerp", {"method": "noise-slerp", "ddim_steps": ddim_steps, "noise_level": noise_level}),
            ("noise-slerp + even", {"method": "noise-slerp", "ddim_steps": ddim_steps, "noise_level": noise_level, "even": True}),
        ]
    return rows


def has_denoiser(model: str) -> bool:
    try:
        return locate_component(model, "unet").subfolder == "unet"
    except ModelError:
        return False


def make_scope(model: str, folder: Path) -> Path:
    pixels, labels = digits_array(32)
    scope = folder / "digits.scope"
    latentscope.encode(pixels, model, scope, labels=labels, progress=False, thumbnails=False)
    return scope


def random_pairs(ids: np.ndarray, count: int, seed: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    pairs = []
    while len(pairs) < count:
        a, b = rng.choice(ids, 2, replace=False)
        pairs.append((int(a), int(b)))
    return pairs


def smoothness(walker: Walker, pairs, options: dict, steps: int, real: np.ndarray, spacing: float) -> dict:
    rows = {name: [] for name in COLUMNS}
    inversion, levels = [], set()
    for a, b in pairs:
        started = time.perf_counter()
        walk = walker.run(WalkSpec(ends=[a, b], steps=steps, **options))
        seconds = time.perf_counter() - started
        inversion += walk.info.get("inversion_error", [])
        if "noise_level" in walk.info:
            levels.add(round(walk.info["noise_level"], 4))
        summary = walk_metrics(walk.pixels, walk.latents, real, spacing=spacing).summary
        summary["max_nearest_real_relative"] = summary["max_nearest_real"] / spacing
        summary["seconds"] = seconds
        for name in COLUMNS:
            rows[name].append(summary[name])
    result = {name: float(np.mean(values)) for name, values in rows.items()} | {"pairs": len(pairs)}
    if inversion:
        result.update(inversion_error_mean=float(np.mean(inversion)), inversion_error_max=float(np.max(inversion)), noise_level=sorted(levels))
    return result


def median_seconds(function, repeats: int) -> float:
    function()  # warm-up (first-call allocations, lazy imports)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def timing(walker: Walker, pair, steps: int, repeats: int, has_unet: bool, ddim_steps: int, noise_level: float) -> dict:
    codec = walker.codec
    latents = torch.from_numpy(walker.real_latents()[:steps].copy())
    out = {"bare_decode": median_seconds(lambda: codec.decode(latents), repeats)}
    methods = {"lerp": {}, "slerp": {}, "slerp + even": {"method": "slerp", "even": True}, "data-path": {"method": "data-path"}}
    if has_unet:
        methods["noise-slerp"] = {"method": "noise-slerp", "ddim_steps": ddim_steps, "noise_level": noise_level}
        methods["slerp + polish 0.2"] = {"method": "slerp", "polish": 0.2}
    for name, options in methods.items():
        options = {"method": name, **options}
        out[name] = median_seconds(lambda: walker.run(WalkSpec(ends=list(pair), steps=steps, **options)), repeats)
    fresh = lambda: Walker(walker.scope.path, model=walker.model_reference, device="cpu").run(WalkSpec(ends=list(pair), steps=steps))  # noqa: E731
    out["slerp, new Walker (opens scope, loads model)"] = median_seconds(fresh, repeats)
    return out


def cold_cli_seconds(scope: Path, model: str, pair, steps: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "latentscope", "walk", str(scope), "--from", str(pair[0]), "--to", str(pair[1]),
                   "--steps", str(steps), "--model", model, "--out", str(Path(folder) / "morph.gif"), "-q"]
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        return time.perf_counter() - started


def table(results: dict) -> str:
    lines = ["| walk | mean step (RMS) | max step | evenness | evenness (1-SSIM) | nearest real, mean (x spacing) | nearest real, max | s / walk |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in results.items():
        lines.append(f"| {name} | {row['mean_rms_step']:.4f} | {row['max_rms_step']:.4f} | {row['evenness']:.3f} | {row['evenness_dssim']:.3f} | "
                     f"{row['mean_nearest_real_relative']:.2f} | {row['max_nearest_real_relative']:.2f} | {row['seconds']:.3f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:digits")
    parser.add_argument("--scope", help="reuse this digits scope instead of encoding into a temporary one")
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--noise-pairs", type=int, help="pairs for noise-slerp and polish (default: --pairs)")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--ddim-steps", type=int, default=25)
    parser.add_argument("--noise-level", type=float, help="noise-slerp inversion level (default: auto)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--quick", action="store_true", help="10 pairs, 2 timing repeats")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.pairs, args.repeats = min(args.pairs, 10), 2
    try:
        locate_component(args.model, "vae")
    except LatentscopeError as exc:
        print(f"bench_walks: {exc}", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="bench-walks-"))
    started = time.perf_counter()
    scope = Path(args.scope) if args.scope else make_scope(args.model, work)
    encode_seconds = time.perf_counter() - started
    walker = Walker(scope, model=args.model, device="cpu")
    real = walker.real_latents()
    spacing = typical_spacing(real)
    ids = walker.scope.ok_manifest()["id"].to_numpy()
    pairs = random_pairs(ids, args.pairs, args.seed)
    noise_pairs = pairs[: args.noise_pairs or args.pairs]
    unet = has_denoiser(args.model)

    results = {}
    for name, options in variants(unet, args.ddim_steps, args.noise_level):
        chosen = noise_pairs if options["method"] == "noise-slerp" or "polish" in options else pairs
        results[name] = smoothness(walker, chosen, options, args.steps, real, spacing)
        print(f"{name}: {results[name]}", file=sys.stderr, flush=True)

    times = timing(walker, pairs[0], args.steps, args.repeats, unet, args.ddim_steps, args.noise_level)
    cold = cold_cli_seconds(scope, args.model, pairs[0], args.steps)

    report = [
        f"model `{args.model}`: {len(real)} digits, latents {tuple(real.shape[1:])}, encoded in {encode_seconds:.1f} s; "
        f"typical real-to-real nearest distance {spacing:.4f} (RMS per element).",
        f"LPIPS: {'measured' if lpips_model() is not None else 'not available here (no lpips package or local AlexNet weights)'}.",
        f"\n### Smoothness\n\n{len(pairs)} random pairs ({len(noise_pairs)} for noise-slerp and polish), {args.steps} frames, "
        f"seed {args.seed}. Steps are RMS pixel changes between consecutive frames (pixels in [0, 1]); evenness = 1 - Gini of "
        "the steps; nearest real = distance of each frame's latent to the nearest real latent, in units of the typical "
        "real-to-real nearest-neighbour distance.\n",
        table(results),
    ]
    for name, row in results.items():
        if "inversion_error_mean" in row:
            report.append(f"\n{name}: inverted to level t = {row['noise_level']}, {args.ddim_steps} DDIM steps; round-trip error of "
                          f"the ends (relative RMS, blended out along the walk) mean {row['inversion_error_mean']:.3f}, "
                          f"max {row['inversion_error_max']:.3f}.")
    report.append(f"\n### Time for a {args.steps}-frame decoded morph\n\nWarm walker (model loaded once, as in the dashboard), "
                  f"median of {args.repeats}; the bare decode of {args.steps} latents in the same run is the reference.\n")
    report.append("| walk | seconds | x bare decode |\n|---|---|---|")
    report += [f"| {name} | {seconds:.3f} | {seconds / times['bare_decode']:.2f} |" for name, seconds in times.items()]
    worst = max(times["lerp"], times["slerp"])
    report.append(f"\nTarget: a 24-frame lerp / slerp morph under 0.5 s at 32 x 32: {worst:.3f} s, "
                  f"{'met' if worst < 0.5 else 'NOT met'}. Noise-space slerp costs {times.get('noise-slerp', float('nan')):.2f} s "
                  f"({args.ddim_steps} DDIM steps to invert each end and to sample each frame).")
    report.append(f"\nCold CLI (process start + model load + walk + GIF + sidecar): {cold:.2f} s.")
    body = "\n".join(report)
    print(body)
    if not args.quick:
        load = os.getloadavg()
        write_section("walks", f"## Walks (issue 5)\n\nCommand: `{command_line()}`  \nMachine: {machine_line()}; "
                      f"1/5/15-minute load average at the end: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}.\n\n{body}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "pairs": len(pairs), "steps": args.steps, "spacing": spacing,
                                               "smoothness": results, "timing": times, "cold_cli": cold}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

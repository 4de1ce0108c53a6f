"""Benchmarks of ``latentscope train`` (issue 3); figures go to benchmarks/RESULTS.md, section "Training (issue 3)".

    python benchmarks/bench_train.py                 # everything (about an hour on 2 CPU cores)
    python benchmarks/bench_train.py --only digits   # the shipped demo model: PSNR, sample quality, time
    python benchmarks/bench_train.py --only colour   # colour sets at 32 and 64 px: autoencoder vs PCA
    python benchmarks/bench_train.py --only speed    # training-loop throughput vs a bare forward + backward
    python benchmarks/bench_train.py --only costs    # measured step time per image by size vs the plan's table
    python benchmarks/bench_train.py --quick         # tiny versions of each part, for a smoke test

Timings on a shared machine are noisy; the throughput figure is a ratio measured
within one run (the two loops interleaved), which noise affects far less.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.colour_sets import describe, load_set, split_by_group  # noqa: E402
from benchmarks.results import write_section  # noqa: E402
from latentscope.codec import BUILTIN_ROOT, Codec  # noqa: E402
from latentscope.datasets import digits_array  # noqa: E402
from latentscope.denoiser import Denoiser  # noqa: E402
from latentscope.training import autoencoder as ae_phase  # noqa: E402
from latentscope.training import RECIPE_VERSION, anchored_step, make_plan, train  # noqa: E402
from latentscope.training import diffusion  # noqa: E402
from latentscope.training.plan import AE_IMAGES_SEEN, COARSE_SHARE, DENOISER_STEP_MS_BY_POSITIONS, STEP_MS_BY_PIXELS  # noqa: E402
from latentscope.training.loop import Phase, make_optimizer  # noqa: E402
from latentscope.training.metrics import psnr  # noqa: E402

STORE = ROOT / "benchmarks" / "out" / "train_results.json"  # figures of earlier partial runs (--only), merged into the report
SECTION = "## Training (issue 3)"


def as_nchw(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float()


def mean_psnr(reference: np.ndarray, test: np.ndarray) -> float:
    return float(psnr(as_nchw(reference), as_nchw(test)).mean())


# --------------------------------------------------------------------------- digits demo model


def nearest_distance(queries: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Euclidean distance (pixels 0..1) from each query image to its nearest image in ``pool``."""
    q = torch.from_numpy(queries.reshape(len(queries), -1).astype(np.float32) / 255.0)
    p = torch.from_numpy(pool.reshape(len(pool), -1).astype(np.float32) / 255.0)
    return torch.cdist(q, p).min(dim=1).values.numpy()


def bench_digits(model: str = "builtin:digits", samples: int = 64, steps: int = 50) -> dict:
    folder = BUILTIN_ROOT / "digits" if model == "builtin:digits" else Path(model)
    record = json.loads((folder / "training.json").read_text())
    images, labels = digits_array(32)
    names = {f"{labels[i]}/{i:04d}.png": i for i in range(len(images))}
    val_idx = np.array(sorted(names[n] for n in record["data"]["validation_names"]))
    train_idx = np.setdiff1d(np.arange(len(images)), val_idx)
    codec = Codec.from_pretrained(model, device="cpu")
    denoiser = Denoiser.from_pretrained(model, device="cpu")
    recon = codec.decode_to_pixels(codec.encode_pixels(images[val_idx]))
    noise = torch.randn(samples, *codec.latent_shape((32, 32)), generator=torch.Generator().manual_seed(0))
    started = time.perf_counter()
    generated = codec.decode_to_pixels(denoiser.sample(noise, steps).numpy())
    sample_seconds = time.perf_counter() - started
    held_out = images[np.random.default_rng(0).choice(val_idx, samples, replace=False)]
    d_generated = nearest_distance(generated, images[train_idx])
    d_real = nearest_distance(held_out, images[train_idx])
    return {
        "held_out_fraction": round(len(val_idx) / len(images), 3),
        "held_out": len(val_idx),
        "psnr": mean_psnr(images[val_idx], recon),
        "recorded_psnr": record["autoencoder"]["metrics"]["psnr"],
        "nn_generated": float(d_generated.mean()),
        "nn_real": float(d_real.mean()),
        "nn_ratio": float(d_generated.mean() / d_real.mean()),
        "sample_seconds": sample_seconds,
        "train_seconds": record["seconds"],
        "ae_seconds": record["autoencoder"]["seconds"],
        "denoiser_seconds": record["denoiser"]["seconds"],
        "threads": record["environment"]["threads"],
        "command": record["command"],
        "recipe": record.get("identity", {}).get("recipe"),  # records of the first recipe have no identity
    }


# --------------------------------------------------------------------------- colour sets vs PCA


def pca_psnr(train_images: np.ndarray, test_images: np.ndarray, components: int) -> float:
    from sklearn.decomposition import PCA

    flat = lambda a: a.reshape(len(a), -1).astype(np.float32)  # noqa: E731
    pca = PCA(components, random_state=0).fit(flat(train_images))
    recon = pca.inverse_transform(pca.transform(flat(test_images)))
    return mean_psnr(test_images, np.clip(np.round(recon), 0, 255).astype(np.uint8).reshape(test_images.shape))


def refined_psnr(codec: Codec, images: np.ndarray, steps: int) -> dict:
    """Mean PSNR of the images decoded from latents refined by ``steps`` optimisation steps, and the time it took."""
    started = time.perf_counter()
    latents = codec.encode_pixels(images, refine=steps)
    seconds = time.perf_counter() - started
    return {"steps": steps, "psnr": mean_psnr(images, codec.decode_to_pixels(latents)), "ms_per_image": 1000 * seconds / len(images)}


def bench_colour(name: str, size: int, count: int = 2000, epochs: int | None = None, refine_steps=()) -> dict:
    images, groups = load_set(name, size, count)
    train_idx, test_idx = split_by_group(groups, 0.2, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        result = train(images[train_idx], Path(tmp) / "model", denoiser=False, epochs=epochs, progress=False)
        codec = Codec.from_pretrained(str(Path(tmp) / "model"), device="cpu")
        recon = codec.decode_to_pixels(codec.encode_pixels(images[test_idx]))
        refined = [refined_psnr(codec, images[test_idx], steps) for steps in refine_steps]
    code_size = int(np.prod(result.record["plan"]["latent_shape"]))
    ae = mean_psnr(images[test_idx], recon)
    pca = pca_psnr(images[train_idx], images[test_idx], min(code_size, len(train_idx)))
    return {"set": name, "size": size, "description": describe(images, groups), "train": len(train_idx), "test": len(test_idx),
            "latent": result.record["plan"]["latent_shape"], "code_size": code_size, "ae_psnr": ae, "pca_psnr": pca,
            "margin": ae - pca, "refined": refined, "epochs": result.record["autoencoder"]["epochs_run"],
            "coarse_epochs": (result.record["autoencoder"].get("coarse") or {}).get("epochs_run", 0),
            "seconds": result.record["autoencoder"]["seconds"]}


# --------------------------------------------------------------------------- throughput


def bench_speed(size: int = 32, count: int = 640, rounds: int = 3, epochs: int = 2) -> dict:
    """images/s of our autoencoder phase (whole epochs: batching, augmentation, schedule, validation,
    checkpoints) divided by images/s of a bare forward + backward + optimizer step of the same model."""
    images, _ = load_set("icons", size, 2000)
    pixels = ae_phase.pixels_tensor(images[:count])
    val = ae_phase.pixels_tensor(images[count : count + count // 10])
    plan = make_plan((size, size), count, epochs=epochs)
    ours, bare = [], []
    for r in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            torch.manual_seed(r)
            vae = ae_phase.build_autoencoder(plan)
            started = time.perf_counter()
            step, warm_start = anchored_step(plan, vae, pixels, epochs, "cpu")  # as latentscope train's first stage
            phase = Phase("autoencoder", vae, count, step, lambda: ae_phase.evaluate(vae, val), epochs=epochs,
                          warm_start_steps=warm_start, batch_size=plan.batch_size, learning_rate=plan.learning_rate, seed=r,
                          checkpoint=Path(tmp) / "ckpt.safetensors", identity={}, monitor="psnr", progress=False)
            result = phase.run()
            ours.append(result.examples / (time.perf_counter() - started))
        bare.append(_bare_images_per_second(plan, result.steps, r))
    ratio = float(np.median(np.array(ours) / np.array(bare)))
    return {"ours": float(np.median(ours)), "bare": float(np.median(bare)), "ratio": ratio, "rounds": rounds,
            "steps": result.steps, "batch": plan.batch_size, "size": size, "threads": torch.get_num_threads()}


def bench_step_costs(steps: int = 150, rounds: int = 3) -> dict:
    """ms per image of a bare training step at each size of the plan's cost table (width 16, batch 8), the median
    of ``rounds``, so the table and the plan's time budget can be checked against this machine."""
    rows = []
    for pixels, planned in STEP_MS_BY_PIXELS:
        side = int(round(pixels**0.5))
        plan = make_plan((side, side), 1000, downscale=4, width=16)
        _bare_images_per_second(plan, 5, 0)  # warm-up: first calls allocate
        rates = [_bare_images_per_second(plan, steps, r) for r in range(rounds)]
        rows.append({"side": side, "ms": 1000 / float(np.median(rates)), "planned_ms": planned})
    denoiser_rows = []
    for positions, planned in DENOISER_STEP_MS_BY_POSITIONS:
        side = int(round(positions**0.5))
        plan = make_plan((4 * side, 4 * side), 1000, downscale=4, width=16)
        _bare_latents_per_second(plan, 3, 0)
        rates = [_bare_latents_per_second(plan, max(10, steps // 4), r) for r in range(rounds)]
        denoiser_rows.append({"side": side, "ms": 1000 / float(np.median(rates)), "planned_ms": planned})
    return {"rows": rows, "denoiser_rows": denoiser_rows, "steps": steps, "rounds": rounds,
            "threads": torch.get_num_threads()}


def _bare_images_per_second(plan, steps: int, seed: int) -> float:
    torch.manual_seed(seed)
    vae = ae_phase.build_autoencoder(plan).train()
    optimizer = make_optimizer(vae, plan.learning_rate, 0.0)  # the same (fused) optimizer as our loop
    batch = ae_phase.to_model_range(torch.randint(0, 256, (plan.batch_size, 3, *plan.size), dtype=torch.uint8))
    started = time.perf_counter()
    for _ in range(steps):
        posterior = vae.encode(batch).latent_dist
        loss = (vae.decode(posterior.sample()).sample - batch).abs().mean() + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * plan.batch_size / (time.perf_counter() - started)


def _bare_latents_per_second(plan, steps: int, seed: int) -> float:
    torch.manual_seed(seed)
    unet = diffusion.build_unet(plan.latent_shape, plan.denoiser_widths).train()
    loss = diffusion.DiffusionLoss(unet, diffusion.build_scheduler())
    optimizer = make_optimizer(unet, plan.denoiser_learning_rate, 0.0)
    step = diffusion.make_step(loss, torch.randn(plan.denoiser_batch_size, *plan.latent_shape))
    indices, generator = torch.arange(plan.denoiser_batch_size), torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    for number in range(steps):
        optimizer.zero_grad(set_to_none=True)
        step(indices, generator, number).backward()
        optimizer.step()
    return steps * plan.denoiser_batch_size / (time.perf_counter() - started)


# --------------------------------------------------------------------------- report


def _epochs_text(row: dict) -> str:
    coarse = row.get("coarse_epochs", 0)
    return f"{coarse} at {row['size'] // 2} px + {row['epochs']}" if coarse else str(row["epochs"])


def render(results: dict, command: str) -> str:
    lines = [SECTION, "", f"Command: `{command}` (torch threads: {torch.get_num_threads()}).", ""]
    if "digits" in results:
        d = results["digits"]
        lines += [
            "### Shipped demo model (`builtin:digits`)",
            "",
            f"Trained with `{d['command']}`"
            + (f", with training recipe {d.get('recipe') or 1}, before the current recipe ({RECIPE_VERSION}; the colour sets "
               "below use it); the shipped weights are those of that earlier run." if d.get("recipe") != RECIPE_VERSION else "."),
            "",
            "| metric | value |",
            "|---|---|",
            f"| reconstruction PSNR, held-out {d['held_out_fraction']:.0%} ({d['held_out']} images) | {d['psnr']:.2f} dB (recorded at training: {d['recorded_psnr']:.2f} dB) |",
            f"| nearest-training-image distance, 64 generated samples (DDIM 50 steps) | {d['nn_generated']:.3f} |",
            f"| nearest-training-image distance, 64 held-out real images | {d['nn_real']:.3f} |",
            f"| sample-quality ratio (generated / real; 1 = as close to the data as unseen real digits) | {d['nn_ratio']:.2f} |",
            f"| training wall time (autoencoder + denoiser, {d['threads']} threads) | {d['train_seconds'] / 60:.1f} min "
            f"({d['ae_seconds'] / 60:.1f} + {d['denoiser_seconds'] / 60:.1f}) |",
            "",
        ]
    if "colour" in results:
        lines += [
            "### Colour sets: autoencoder vs PCA with the same code size (held out by source)",
            "",
            "| set | images | latent (code values) | AE PSNR | PCA PSNR | margin | AE epochs | AE training time |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in results["colour"]:
            lines.append(
                f"| {c['set']} {c['size']}px | {c['description']}; {c['train']} train / {c['test']} held out | "
                f"{'x'.join(map(str, c['latent']))} ({c['code_size']}) | {c['ae_psnr']:.2f} dB | {c['pca_psnr']:.2f} dB | "
                f"{c['margin']:+.2f} dB | {_epochs_text(c)} | {c['seconds'] / 60:.1f} min |"
            )
        lines += ["", "Target: AE at least 3 dB above PCA within 10 minutes of training on 2 idle CPU cores. The automatic plan",
                  f"trains for the time of {AE_IMAGES_SEEN:,} images at 32 px (fewer images at larger sizes, by measured step times per pixel count, times "
                  f"the model's base width); from 64 px up, {COARSE_SHARE:.0%} of that time goes to the images halved in size, the rest to full size; in "
                  "epochs of the images left after the 10 % validation split; every row ran that plan on an otherwise idle machine.",
                  f"The autoencoder starts warm: its ResNet blocks begin as the identity, and the first {ae_phase.ANCHOR_SHARE:.0%} of "
                  "its first stage's steps fit each half to the linear block code of the latent layout (see the warm-start probes below).", ""]
    if "speed" in results:
        s = results["speed"]
        lines += [
            "### Training-loop throughput",
            "",
            f"Autoencoder phase at {s['size']}px, batch {s['batch']}, {s['steps']} steps, median of {s['rounds']} interleaved rounds: "
            f"images/s of our loop (whole epochs incl. fitting the linear block code of the warm start, its anchored steps, "
            f"augmentation, schedule, validation, checkpoints) divided by images/s "
            f"of a bare forward + backward + optimizer step of the same model, each round measured back to back: "
            f"**median ratio {s['ratio']:.2f}** (median rates over the rounds, which the shared machine made differ: "
            f"ours {s['ours']:.1f}, bare {s['bare']:.1f} images/s).",
            "",
        ]
    if "costs" in results:
        c = results["costs"]
        lines += [
            "### Step time per image (the plan's cost table)",
            "",
            f"A bare forward + backward + optimizer step, width 16, batch 8, {c['threads']} threads, median of {c['rounds']} "
            f"rounds of {c['steps']} steps, against the table the plan divides its time budget with (`STEP_MS_BY_PIXELS`).",
            "",
            "| image side | measured ms / image | plan's table | relative to 32 px: measured / table |",
            "|---|---|---|---|",
        ]
        base = {r["side"]: r for r in c["rows"]}[32]
        for r in c["rows"]:
            lines.append(f"| {r['side']} px | {r['ms']:.2f} | {r['planned_ms']:.2f} | "
                         f"{r['ms'] / base['ms']:.2f} / {r['planned_ms'] / base['planned_ms']:.2f} |")
        if c.get("denoiser_rows"):
            lines += [
                "",
                "The denoiser's table (`DENOISER_STEP_MS_BY_POSITIONS`): ms per latent of a bare step, base width 16, "
                "batch 32, the same rounds (a quarter of the steps each).",
                "",
                "| latent side | measured ms / latent | plan's table | relative to 8 x 8: measured / table |",
                "|---|---|---|---|",
            ]
            first = c["denoiser_rows"][0]
            for r in c["denoiser_rows"]:
                lines.append(f"| {r['side']} | {r['ms']:.2f} | {r['planned_ms']:.2f} | "
                             f"{r['ms'] / first['ms']:.2f} / {r['planned_ms'] / first['planned_ms']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("digits", "colour", "speed", "costs"), action="append")
    parser.add_argument("--quick", action="store_true", help="tiny runs (smoke test); RESULTS.md is not written")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--sets", nargs="+", default=["icons", "photos"])
    parser.add_argument("--epochs", type=int, help="autoencoder epochs for the colour sets (default: the automatic plan)")
    args = parser.parse_args()
    parts = args.only or ["digits", "colour", "speed", "costs"]
    results: dict = {}
    if "digits" in parts:
        results["digits"] = bench_digits(samples=8 if args.quick else 64, steps=5 if args.quick else 50)
        print(json.dumps(results["digits"], indent=1), flush=True)
    if "colour" in parts:
        results["colour"] = []
        for name in args.sets:
            for size in args.sizes:
                results["colour"].append(bench_colour(name, size, count=200 if args.quick else 2000, epochs=1 if args.quick else args.epochs))
                print(json.dumps(results["colour"][-1]), flush=True)
    if "speed" in parts:
        results["speed"] = bench_speed(count=128 if args.quick else 640, rounds=1 if args.quick else 3, epochs=1 if args.quick else 2)
        print(json.dumps(results["speed"]), flush=True)
    if "costs" in parts:
        results["costs"] = bench_step_costs(steps=10 if args.quick else 150, rounds=1 if args.quick else 3)
        print(json.dumps(results["costs"]), flush=True)
    if not args.quick:
        stored = json.loads(STORE.read_text()) if STORE.exists() else {}
        colour = {(c["set"], c["size"]): c for c in stored.get("colour", []) + results.pop("colour", [])}
        stored.update(results)
        if colour:
            stored["colour"] = sorted(colour.values(), key=lambda c: (c["set"], c["size"]))
        STORE.parent.mkdir(parents=True, exist_ok=True)
        STORE.write_text(json.dumps(stored, indent=1))
        write_section("train", render(stored, "python benchmarks/bench_train.py"))


if __name__ == "__main__":
    main()

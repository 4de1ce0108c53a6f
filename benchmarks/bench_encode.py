"""Benchmark `latentscope encode` against the bare autoencoder forward pass (issue 2).

For each case a folder of N JPEG/PNG files (photo crops) is encoded twice in one process:

* bare: every image decoded beforehand into one tensor, then ``vae.encode`` batch by batch (timed);
* latentscope: ``latentscope.encode(folder, codec, scope)`` end to end: finding files, hashing, decoding,
  resizing, thumbnails, the forward pass, checkpoints and the final commit (timed).

The ratio is latentscope images/s divided by bare images/s, same model object and batch size. Peak memory
(max RSS) of a fresh `latentscope encode` process is measured for N/2 and N images to show it does not grow
with the number of images.

    python benchmarks/bench_encode.py                 # both cases, 2,000 images each, writes RESULTS.md
    python benchmarks/bench_encode.py --quick         # 200 images, prints only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import command_line, machine_line, write_section  # noqa: E402

from latentscope.codec import Codec  # noqa: E402
from latentscope.images import pixels_to_tensor_range  # noqa: E402
from latentscope.ingest import encode  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
ROUNDS = 3
ROWS = Path(__file__).resolve().parent / "encode-rows.json"


def small_kl():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(64, 128, 128),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
    )


def taesd():
    from diffusers import AutoencoderTiny

    vae = AutoencoderTiny()  # the TAESD architecture, random weights
    vae.register_to_config(sample_size=256)
    return vae


CASES = {
    "kl64": ("small AutoencoderKL (64,128,128; 2 layers/block), 64x64", small_kl, 64, 32),
    "taesd256": ("AutoencoderTiny (TAESD architecture, random weights), 256x256", taesd, 256, 16),
}


def make_photo_folder(folder: Path, n: int, size: int, seed: int = 0) -> Path:
    """N photo crops (from scikit-learn's sample photos) at size x size, half JPEG, half PNG."""
    marker = folder / ".complete"
    if marker.exists():
        return folder
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(p) for p in load_sample_images().images]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        photo = photos[i % len(photos)]
        side = int(rng.integers(min(photo.size) // 6, min(photo.size)))
        x0, y0 = int(rng.integers(0, photo.size[0] - side)), int(rng.integers(0, photo.size[1] - side))
        crop = photo.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        sub = folder / f"part{i % 8}"
        sub.mkdir(exist_ok=True)
        if i % 2:
            crop.save(sub / f"{i:05d}.jpg", quality=90)
        else:
            crop.save(sub / f"{i:05d}.png")
    marker.write_text("ok")
    return folder


def preload(folder: Path) -> torch.Tensor:
    files = sorted(p for p in folder.rglob("*") if p.suffix in (".jpg", ".png"))
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in files])
    return torch.from_numpy(pixels_to_tensor_range(pixels))


def bare_images_per_second(vae, images: torch.Tensor, batch_size: int) -> float:
    with torch.inference_mode():
        vae.encode(images[:batch_size])  # warm-up, as latentscope's run is warm too
        start = time.perf_counter()
        for i in range(0, len(images), batch_size):
            out = vae.encode(images[i : i + batch_size])
            _ = out.latent_dist.mean if hasattr(out, "latent_dist") else out.latents
        return len(images) / (time.perf_counter() - start)


def latentscope_images_per_second(codec: Codec, folder: Path, batch_size: int, work: Path) -> tuple[float, dict]:
    out = work / "scope"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    summary = encode(folder, codec, out, batch_size=batch_size, progress=False)
    seconds = time.perf_counter() - start
    return summary.encoded / seconds, {"encoded": summary.encoded, "failed": summary.failed}


# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over exec, so a child started by this benchmark
# (which holds every image in memory) would report the parent's size.
PEAK_RSS_SCRIPT = """
import json, re, sys
from latentscope.ingest import encode
summary = encode(sys.argv[1], sys.argv[2], sys.argv[3], batch_size=int(sys.argv[4]), progress=False)
peak_kb = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
print(json.dumps({"encoded": summary.encoded, "max_rss_mb": peak_kb / 1024}))
"""


def peak_rss_mb(folder: Path, model_dir: Path, batch_size: int, work: Path) -> dict:
    out = work / "rss-scope"
    shutil.rmtree(out, ignore_errors=True)
    result = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_SCRIPT, str(folder), str(model_dir), str(out), str(batch_size)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def subset_folder(source: Path, target: Path, n: int) -> Path:
    if target.exists():
        shutil.rmtree(target)
    files = sorted(p for p in source.rglob("*") if p.suffix in (".jpg", ".png"))[:n]
    for p in files:
        dest = target / p.relative_to(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.symlink_to(p)
    return target


def run_case(name: str, n: int, work: Path, rounds: int = ROUNDS) -> dict:
    label, build, size, batch_size = CASES[name]
    torch.manual_seed(0)
    model_dir = work / f"model-{name}"
    build().save_pretrained(model_dir)
    codec = Codec.from_pretrained(model_dir, device="cpu")
    folder = make_photo_folder(DATA / f"encode-{size}px-{n}", n, size)
    images = preload(folder)
    measured = []
    for _ in range(rounds):  # interleaved, so a change in machine load hits both sides alike
        bare = bare_images_per_second(codec.vae, images, batch_size)
        ours, counts = latentscope_images_per_second(codec, folder, batch_size, work)
        measured.append((bare, ours))
    del images
    bare, ours = (float(np.median(side)) for side in zip(*measured))
    ratio = float(np.median([o / b for b, o in measured]))
    row = {"key": name, "command": command_line(), "conditions": f"1-minute load average {os.getloadavg()[0]:.1f} at the end", "case": label, "n": n, "batch": batch_size, "bare": bare, "ours": ours, "ratio": ratio,
           "ratios": [round(o / b, 3) for b, o in measured], **counts}
    if name == "kl64":
        half = peak_rss_mb(subset_folder(folder, work / "half", n // 2), model_dir, batch_size, work)
        full = peak_rss_mb(folder, model_dir, batch_size, work)
        row["rss"] = (half["max_rss_mb"], full["max_rss_mb"], half["encoded"], full["encoded"])
    print(json.dumps({k: v for k, v in row.items()}, default=str), flush=True)
    return row


def to_markdown(rows: list[dict]) -> str:
    lines = [
        "## Encode (issue 2)",
        "",
        "Commands: " + "; ".join(sorted({f"`{r['command']}`" for r in rows})) + "  ",
        f"Machine: {machine_line()}",
        "",
        "| case | images | batch | bare `vae.encode` img/s | `latentscope encode` img/s | ratio, median of rounds (target >= 0.9) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['case']} | {r['n']} | {r['batch']} | {r['bare']:.1f} | {r['ours']:.1f} | **{r['ratio']:.2f}** "
                     f"({', '.join(f'{x:.2f}' for x in r['ratios'])}) |")
    lines += [
        "",
        "Bare: all images decoded beforehand into one tensor, `vae.encode` over batches (forward only). "
        "latentscope: the whole `encode()` call on the folder (file discovery, sha256, decoding, resizing, "
        "thumbnails, forward pass, checkpoints, final commit), the same model object and batch size. "
        "Interleaved rounds (bare, latentscope, bare, ...); medians reported, each round's ratio in brackets.",
    ]
    lines += ["", "Conditions: " + "; ".join(f"{r['case']}: {r.get('conditions', 'not recorded')}" for r in rows) + "."]
    for r in rows:
        if "rss" in r:
            half, full, n_half, n_full = r["rss"]
            lines += [
                "",
                f"Peak memory (VmHWM) of a fresh `encode` process ({r['case']}): {half:.0f} MB for {n_half} images, "
                f"{full:.0f} MB for {n_full} images ({(full - half) / half * 100:+.1f} %). Latents stream to shards "
                "and a memory-mapped file; the images' pixels are not kept. (Resident memory swings by about 100 MB "
                "within a run as batches are decoded, so peaks a few per cent apart are within that noise.)",
            ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="interleaved rounds per case")
    parser.add_argument("--quick", action="store_true", help="200 images, print only")
    args = parser.parse_args()
    n = 200 if args.quick else args.n
    work = Path(tempfile.mkdtemp(prefix="bench-encode-"))
    try:
        for name in args.cases.split(","):
            row = run_case(name, n, work, args.rounds)
            if not args.quick:  # each finished case is kept, so cases can be measured in separate runs
                write_section("encode", to_markdown(remember_row(row)))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def remember_row(row: dict) -> list[dict]:
    """The latest row of every case measured so far (kept in benchmarks/encode-rows.json, next to RESULTS.md)."""
    rows = json.loads(ROWS.read_text()) if ROWS.exists() else {}
    rows[row["key"]] = row
    ROWS.write_text(json.dumps(rows, indent=1, default=str))
    return [rows[key] for key in CASES if key in rows]


if __name__ == "__main__":
    main()

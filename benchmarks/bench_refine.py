"""Latent refinement against PCA (issue 3): the colour rows of ``bench_train.py --only colour`` (the automatic plan,
held out by source), each autoencoder's held-out PSNR with the encoder's latents and with latents refined by
``Codec.refine`` for a few step counts, against PCA with the same code size; written to the "train-refine" section
of RESULTS.md.

    python benchmarks/bench_refine.py [--sets photos icons] [--sizes 32 64] [--steps 25 50 100]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_train import bench_colour  # noqa: E402
from benchmarks.results import machine_line, write_section  # noqa: E402
from latentscope.codec import REFINE_LEARNING_RATE  # noqa: E402


def render(rows: list[dict], command: str, steps: list[int]) -> str:
    head = " | ".join(f"refined {n} steps" for n in steps)
    lines = ["### Latent refinement: the same autoencoders, latents optimised per image (issue 3)", "",
             f"Command: `{command}`, {machine_line()}; 1-minute load average {os.getloadavg()[0]:.1f} at the end.", "",
             "Each row trains the automatic plan on the split of the colour table above (held out by source), then "
             "decodes the held-out images from the encoder's latents and from latents refined by `Codec.refine` "
             f"(Adam, learning rate {REFINE_LEARNING_RATE}, on each image's squared error; `latentscope encode --refine N`). "
             "Margins are against PCA with the same code size on the same split; ms/image is the refinement's time "
             "on the 2 cores.", "",
             f"| set | latent | AE training time | PCA | encoder | {head} |",
             "|---|---|---|---|---|" + "---|" * len(steps)]
    for r in rows:
        refined = " | ".join(f"{x['psnr']:.2f} dB ({x['psnr'] - r['pca_psnr']:+.2f}; {x['ms_per_image']:.0f} ms/image)"
                             for x in r["refined"])
        lines.append(f"| {r['set']} {r['size']}px | {'x'.join(map(str, r['latent']))} | {r['seconds'] / 60:.1f} min | "
                     f"{r['pca_psnr']:.2f} dB | {r['ae_psnr']:.2f} dB ({r['margin']:+.2f}) | {refined} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["photos", "icons"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--steps", type=int, nargs="+", default=[25, 50, 100])
    parser.add_argument("--quick", action="store_true", help="tiny runs (smoke test); RESULTS.md is not written")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    for name in args.sets:
        for size in args.sizes:
            rows.append(bench_colour(name, size, count=200 if args.quick else 2000, epochs=1 if args.quick else None,
                                     refine_steps=args.steps))
            print(json.dumps(rows[-1]), flush=True)
    command = "python benchmarks/bench_refine.py " + " ".join(sys.argv[1:])
    if not args.quick:
        write_section("train-refine", render(rows, command.strip(), args.steps))


if __name__ == "__main__":
    main()

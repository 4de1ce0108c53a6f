"""Walk ends fitted to their images (``walk --refine-ends N``): how close a morph's first and last frames come to
the real images, and what it costs, on the digits demo.

    python benchmarks/bench_walk_ends.py                 # builtin:digits, 30 random pairs, 24-frame lerp walks
    python benchmarks/bench_walk_ends.py --quick         # 4 pairs, for a smoke run (RESULTS.md is not written)

For each setting: mean PSNR of the two end frames against their images (prepared as the scope prepared them), and
the median seconds of a whole 24-frame decoded walk with a warm walker (model loaded once, as in the explorer).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_walks import make_scope, median_seconds, random_pairs  # noqa: E402
from results import command_line, machine_line, write_section  # noqa: E402
from latentscope.walks import Walker, WalkSpec  # noqa: E402
from latentscope.walks.ends import prepare_file  # noqa: E402


def end_psnr(walker: Walker, pairs, refine: int, steps: int) -> float:
    preprocess = walker.scope.meta["preprocess"]
    values = []
    for pair in pairs:
        walk = walker.run(WalkSpec(ends=list(pair), method="lerp", steps=steps, refine_ends=refine))
        for frame, image_id in zip((0, -1), pair):
            image = prepare_file(walker.scope.image_path(image_id), preprocess, None)[0][0].astype(np.float64)
            error = np.mean((walk.pixels[frame].astype(np.float64) - image) ** 2)
            values.append(10 * np.log10(255.0**2 / max(error, 1e-10)))
    return float(np.mean(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:digits")
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--refine", type=int, nargs="+", default=[0, 25, 50, 100])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        walker = Walker(make_scope(args.model, Path(tmp)), device="cpu")
        pairs = random_pairs(walker.scope.ok_manifest()["id"].to_numpy(), 4 if args.quick else args.pairs, seed=0)
        rows = []
        for refine in args.refine:
            seconds = median_seconds(lambda: walker.run(WalkSpec(ends=list(pairs[0]), method="lerp", steps=24, refine_ends=refine)),
                                     repeats=2 if args.quick else 5)
            rows.append((refine, end_psnr(walker, pairs, refine, 24), seconds))
            print(rows[-1], flush=True)
    lines = ["### Walk ends fitted to their images (`walk --refine-ends N`)", "",
             f"Command: `{command_line()}`  ", f"Machine: {machine_line()}", "",
             f"{args.model}, the 1,797 digits at 32 x 32, {len(pairs)} random pairs, 24-frame lerp walks: mean PSNR of "
             "the first and last frames against their images, and the median time of one whole decoded walk.", "",
             "| refine-ends steps | end frames' PSNR | seconds per walk |", "|---|---|---|"]
    lines += [f"| {refine} | {psnr:.2f} dB | {seconds:.3f} |" for refine, psnr, seconds in rows]
    if not args.quick:
        write_section("walk-ends", "\n".join(lines))


if __name__ == "__main__":
    main()

"""Morph one digit into another with every walk method, export GIFs and contact sheets, and compare smoothness.

    python examples/morph.py                          # digits demo images, shipped demo model
    python examples/morph.py --model path/to/model    # a model folder with vae/ (and unet/ for noise-slerp)
    python examples/morph.py --quick                  # 100 digits and 8 frames, for tests

Writes into --out (default: a temporary folder): one GIF and one PNG contact
sheet per method, each with its sidecar JSON, a direction walk, and a replay check.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import latentscope
from latentscope.codec import locate_component
from latentscope.datasets import write_digits
from latentscope.errors import ModelError
from latentscope.walks import Walker, WalkSpec, replay
from latentscope.walks.ends import prepare_file


def has_denoiser(model: str) -> bool:
    try:
        return locate_component(model, "unet").subfolder == "unet"
    except ModelError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:digits")
    parser.add_argument("--out", help="output folder (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="100 digits, 8 frames")
    args = parser.parse_args()

    work = Path(args.out or tempfile.mkdtemp(prefix="latentscope-morph-"))
    images = write_digits(work / "digits", limit=100 if args.quick else None)
    scope_dir = work / "digits.scope"
    latentscope.encode(images, args.model, scope_dir, progress=False, thumbnails=False)

    walker = Walker(scope_dir, model=args.model)
    manifest = walker.scope.ok_manifest()
    three = int(manifest.loc[manifest.label == "3", "id"].iloc[0])
    eight = int(manifest.loc[manifest.label == "8", "id"].iloc[0])
    steps = 8 if args.quick else 24
    methods = ["lerp", "slerp", "data-path"] + (["noise-slerp"] if has_denoiser(args.model) else [])

    print(f"morphing image {three} (a 3) into image {eight} (an 8), {steps} frames, into {work}")
    print(f"{'method':<16} {'mean step':>9} {'max step':>9} {'evenness':>9} {'off data':>9}")
    for method in methods:
        for even in (False, True) if method == "slerp" or not args.quick else (False,):
            walk = walker.run(WalkSpec(ends=[three, eight], method=method, steps=steps, even=even, ddim_steps=4 if args.quick else 25))
            summary = walk.metrics().summary
            name = method + ("+even" if even else "")
            print(f"{name:<16} {summary['mean_rms_step']:>9.4f} {summary['max_rms_step']:>9.4f} {summary['evenness']:>9.3f} "
                  f"{summary['mean_nearest_real_relative']:>9.2f}")
            walk.save(work / f"{name}.gif", fps=12, size=128, metrics=summary)
            walk.save(work / f"{name}.png", size=64, metrics=summary)

    # ends fitted to their images (walk --refine-ends): the first and last frames come closer to the real digits
    fitted = walker.run(WalkSpec(ends=[three, eight], method="slerp", steps=steps, refine_ends=25))
    plain = walker.run(WalkSpec(ends=[three, eight], method="slerp", steps=steps))
    first = prepare_file(walker.scope.image_path(three), walker.scope.meta["preprocess"], None)[0][0].astype(float)
    print(f"first frame's squared error: {np.mean((plain.pixels[0] - first) ** 2):.1f} plain, "
          f"{np.mean((fitted.pixels[0] - first) ** 2):.1f} with --refine-ends 25")
    fitted.save(work / "slerp+refined-ends.gif", fps=12, size=128)

    # latent arithmetic: push the 3 along the direction from the mean "1" to the mean "7"
    direction = walker.run(WalkSpec(ends=[three], method="lerp", steps=steps, direction={"from": "label:1", "to": "label:7", "strength": (-1, 1)}))
    direction.save(work / "direction.png", layout="strip", size=64)

    # every export can be rebuilt from its sidecar
    again = replay(work / "slerp+even.gif.json")
    original = walker.run(WalkSpec(ends=[three, eight], method="slerp", steps=steps, even=True))
    assert np.array_equal(again.pixels, original.pixels)
    print(f"replayed slerp+even.gif.json: {len(again)} identical frames")
    print("wrote " + ", ".join(sorted(p.name for p in work.glob("*.gif"))))


if __name__ == "__main__":
    main()

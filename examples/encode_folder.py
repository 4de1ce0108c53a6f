"""Encode a folder of images into a scope, then read the result with plain pandas and NumPy.

    python examples/encode_folder.py                      # the digits demo images, shipped demo model
    python examples/encode_folder.py --images ~/photos --model stabilityai/sd-vae-ft-mse --out photos.scope
    python examples/encode_folder.py --quick              # 100 images, for tests
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

import latentscope
from latentscope.datasets import write_digits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", help="folder of images (default: scikit-learn's digits written as PNG)")
    parser.add_argument("--model", default="builtin:digits")
    parser.add_argument("--out", help="scope folder (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="only 100 digits")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="latentscope-example-"))
    images = args.images or write_digits(work / "digits", limit=100 if args.quick else None)
    out = Path(args.out or work / "digits.scope")

    summary = latentscope.encode(images, args.model, out, progress=not args.quick)
    print("\n".join(summary.lines()))

    # Everything in a scope opens without latentscope:
    manifest = pd.read_parquet(out / "images.parquet")
    latents = np.load(out / "latents.npy", mmap_mode="r")
    ok = manifest[manifest.status == "ok"].sort_values("row")
    print(manifest.groupby("status").size().to_string())
    print(f"latents: {latents.shape} {latents.dtype}; first image {ok.path.iloc[0]!r} has latent norm "
          f"{np.linalg.norm(latents[0].astype(np.float32)):.2f}")
    assert len(ok) == len(latents)


if __name__ == "__main__":
    main()

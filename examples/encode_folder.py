"""Encode a folder of images into a scope, read the result with plain pandas and NumPy, and see how much closer
refined latents (``latentscope encode --refine N``) decode to their images.

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
    parser.add_argument("--refine", type=int, default=25, help="refinement steps for the comparison at the end")
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
    compare_refined(out, ok.id.iloc[:16].tolist(), args.model, args.refine)


def compare_refined(out: Path, ids: list[int], model: str, steps: int) -> None:
    """Reconstruction PSNR of a few scope images from the encoder's latents and from refined ones."""
    from latentscope.codec import Codec
    from latentscope.images import prepare_image, read_file
    from latentscope.scope import Scope

    scope = Scope(out)
    size = tuple(scope.meta["preprocess"]["size"])
    pixels = np.stack([prepare_image(read_file(scope.image_path(i)), size).pixels for i in ids])
    codec = Codec.from_pretrained(model, device="cpu")

    def psnr(latents):
        error = np.mean((codec.decode_to_pixels(latents).astype(np.float64) - pixels) ** 2, axis=(1, 2, 3))
        return float(np.mean(10 * np.log10(255.0**2 / np.maximum(error, 1e-10))))

    plain, refined = psnr(codec.encode_pixels(pixels)), psnr(codec.encode_pixels(pixels, refine=steps))
    print(f"reconstruction PSNR of {len(ids)} images: encoder {plain:.2f} dB, refined ({steps} steps) {refined:.2f} dB")


if __name__ == "__main__":
    main()

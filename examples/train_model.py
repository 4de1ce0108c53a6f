"""Train a compact latent diffusion model on a folder of images, then use it: encode, reconstruct, sample.

    python examples/train_model.py                          # scikit-learn's digits, the shipped model's recipe (minutes)
    python examples/train_model.py --images ~/icons --out icons-model
    python examples/train_model.py --quick                  # 64 digits at 16 px, a few steps (for tests)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

import latentscope
from latentscope.codec import Codec
from latentscope.datasets import write_digits
from latentscope.denoiser import Denoiser


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", help="folder of images (default: scikit-learn's digits written as PNG)")
    parser.add_argument("--out", help="model folder (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="64 images at 16 px, 2 epochs per phase")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="latentscope-train-"))
    images = args.images or write_digits(work / "digits", limit=64 if args.quick else None)
    out = Path(args.out or work / "model")
    options = dict(size=16, width=8, epochs=2, denoiser_epochs=2, batch_size=8, progress=False) if args.quick else {}

    # 1. train: autoencoder, then a denoiser on its scaled latents; resumable, with a model card
    result = latentscope.train(images, out, overwrite=True, **options)
    print("\n".join(result.lines()))

    # 2. the folder works wherever --model is accepted
    codec = Codec.from_pretrained(str(out), device="cpu")
    denoiser = Denoiser.from_pretrained(str(out), device="cpu")
    size = codec.image_size
    summary = latentscope.encode(images, codec, work / "scope", progress=False)
    latents = np.load(work / "scope" / "latents.npy").astype(np.float32)
    print(f"encoded {summary.encoded} images to latents {latents.shape[1:]}, mean {latents.mean():+.2f}, std {latents.std():.2f}")

    # 3. diffusion reconstruction at noise level t = 0.5, and new samples from pure noise
    first = torch.from_numpy(latents[:8])
    rebuilt = denoiser.reconstruct(first, t=0.5, steps=10, generator=torch.Generator().manual_seed(0))
    print(f"diffusion reconstruction at t=0.5: relative latent error {float((rebuilt - first).norm() / first.norm()):.3f}")
    noise = torch.randn(8, *codec.latent_shape(size), generator=torch.Generator().manual_seed(1))
    samples = codec.decode_to_pixels(denoiser.sample(noise, steps=10 if args.quick else 50).numpy())
    print(f"sampled {len(samples)} new images of {samples.shape[1]}x{samples.shape[2]}; model card: {out / 'README.md'}")


if __name__ == "__main__":
    main()

"""``latentscope train IMAGES --out MODEL``"""

from __future__ import annotations

import argparse

from ..runtime import DEVICE_CHOICES
from .common import image_size, non_negative_int, positive_float, positive_int


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a compact latent diffusion model (autoencoder + denoiser) on your images",
        description="Fit a small AutoencoderKL on the images under IMAGES, then a UNet denoiser on its latents, and save "
        "both in --out (vae/, unet/, scheduler/, README.md model card). Sizes and lengths are chosen from the image "
        "size and count unless given. An interrupted run resumes when rerun with the same arguments.",
    )
    parser.add_argument("images", help="folder of images (searched recursively)")
    parser.add_argument("--out", required=True, help="model folder to write")
    parser.add_argument("--size", type=image_size, help="training image size, e.g. 32 or 64 (default: 32 for small images, else 64)")
    parser.add_argument("--resize", choices=("center-crop", "pad"), default="center-crop", help="how images are fitted to the size")
    parser.add_argument("--background", default="white", help="colour behind transparent pixels and padding")
    parser.add_argument("--latent-channels", type=positive_int, default=4, help="channels of the latent (default 4)")
    parser.add_argument("--downscale", type=int, choices=(2, 4, 8, 16), help="image-to-latent reduction (default: 4 up to 64 px, else 8)")
    parser.add_argument("--width", type=positive_int, help="autoencoder base width, a multiple of 8 (default: 16 up to 64 px, else 24)")
    parser.add_argument("--epochs", type=positive_int, help="autoencoder epochs at full size (default: chosen from the image count)")
    parser.add_argument("--coarse-epochs", type=non_negative_int,
                        help="autoencoder epochs on the images halved in size before the full-size ones, 0 for none "
                        "(default: chosen with --epochs from the image count; 0 when --epochs is given)")
    parser.add_argument("--denoiser-epochs", type=positive_int, help="denoiser epochs (default: chosen from the image count)")
    parser.add_argument("--batch-size", type=positive_int, help="batch size (default 8 for the autoencoder, 32 for the denoiser)")
    parser.add_argument("--lr", type=positive_float, help="peak learning rate of the autoencoder (default 2e-3; the denoiser uses a quarter)")
    parser.add_argument("--seed", type=int, default=0, help="seed for initialisation, split, order and noise (default 0)")
    parser.add_argument("--val-fraction", type=positive_float, default=0.1, help="share of images held out for validation (default 0.1)")
    parser.add_argument("--patience", type=int, default=8, help="stop a phase after this many epochs without improvement (0 = never)")
    parser.add_argument("--no-denoiser", action="store_true", help="train only the autoencoder")
    parser.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="where to train (default: auto = GPU when present)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import shlex

    from ..training import train

    result = train(
        args.images,
        args.out,
        size=args.size,
        resize=args.resize,
        background=args.background,
        latent_channels=args.latent_channels,
        downscale=args.downscale,
        width=args.width,
        epochs=args.epochs,
        coarse_epochs=args.coarse_epochs,
        denoiser_epochs=args.denoiser_epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        seed=args.seed,
        val_fraction=args.val_fraction,
        patience=args.patience,
        denoiser=not args.no_denoiser,
        device=args.device,
        overwrite=args.overwrite,
        progress=args.progress,
        command=shlex.join(["latentscope", *args.argv]),
    )
    print("\n".join(result.lines()))
    return 0

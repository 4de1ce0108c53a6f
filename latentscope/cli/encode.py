"""``latentscope encode IMAGES --model M --out SCOPE``"""

from __future__ import annotations

import argparse

from .common import (add_device_options, add_engine_options, add_model_option, image_size, non_negative_int, positive_float,
                     positive_int)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "encode",
        help="encode a folder of images into a scope",
        description="Encode every image under IMAGES into the model's latent space and store them in the scope folder "
        "--out. Rerunning adds only new or changed images; an interrupted run resumes.",
    )
    parser.add_argument("images", help="folder of images (searched recursively)")
    add_model_option(parser)
    parser.add_argument("--out", required=True, help="scope folder to create or add to")
    parser.add_argument("--size", type=image_size, help="model input size, e.g. 64 or 48x64 (default: the model's sample_size)")
    parser.add_argument("--resize", choices=("center-crop", "pad"), default="center-crop", help="how images are fitted to the size")
    parser.add_argument("--background", default="white", help="colour behind transparent pixels and padding (white, black, grey, #rrggbb)")
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--workers", type=positive_int, help="image-loading threads (default: up to 4)")
    parser.add_argument("--sample", action="store_true", help="draw latents from the posterior instead of taking its mean")
    parser.add_argument("--seed", type=int, default=0, help="seed for --sample")
    parser.add_argument("--refine", type=non_negative_int, default=0, metavar="STEPS",
                        help="optimise each latent for STEPS steps so it decodes closer to its image (sharper reconstructions "
                        "and walk ends; STEPS decoder passes per image, e.g. 50; such a scope cannot be scored by "
                        "reconstruction, see 'latentscope score')")
    parser.add_argument("--max-pixels", type=positive_int, default=None, help="refuse images larger than this (decompression-bomb guard)")
    parser.add_argument("--file-timeout", type=positive_float, default=120.0, help="seconds allowed to decode one file")
    parser.add_argument("--tiling", action=argparse.BooleanOptionalAction, default=None,
                        help="encode tile by tile to bound memory on large images (default: on above 1024 px)")
    parser.add_argument("--no-thumbnails", action="store_true", help="skip writing dashboard previews")
    parser.add_argument("--no-metadata", action="store_true",
                        help="do not attach the folder's metadata.csv / .jsonl / .parquet (Hugging Face image-folder layout)")
    add_device_options(parser)
    add_engine_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..images import DEFAULT_MAX_PIXELS
    from ..ingest import encode

    summary = encode(
        args.images,
        args.model,
        args.out,
        size=args.size,
        resize=args.resize,
        background=args.background,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        sample=args.sample,
        seed=args.seed,
        refine=args.refine,
        workers=args.workers,
        thumbnails=not args.no_thumbnails,
        metadata=not args.no_metadata,
        max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS,
        file_timeout=args.file_timeout,
        tiling=args.tiling,
        progress=args.progress,
        engine=args.engine,
        ray_address=args.ray_address,
        ray_actors=args.ray_actors,
    )
    print("\n".join(summary.lines()))
    return 0

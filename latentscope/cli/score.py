"""``latentscope score SCOPE [--model M]``"""

from __future__ import annotations

import argparse

from .common import add_device_options, add_engine_options, fraction, non_negative_int, output_folder, positive_int


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "score",
        help="anomaly scores (and heatmaps) for every image of a scope",
        description="Score every encoded image of SCOPE by diffusion reconstruction error: noise each latent to several "
        "levels t, denoise back with DDIM, decode and compare with the image, calibrated per level and per pixel "
        "position against normal images (a sample of the scope itself unless --reference is given), together with how "
        "typical each image is among the reference images in the denoiser's eyes (distance to its nearest neighbours "
        "by the denoiser's bottleneck features, position by position and averaged over positions); the score is the "
        "largest tail surprise of these terms. Writes "
        "scores/NAME.parquet and a heatmap per image; an interrupted run resumes when rerun with the same options, "
        "and up-to-date scores are reused (the top list and --export then cost no scoring). "
        "Baselines (--method) write the same files.",
    )
    parser.add_argument("scope", help="scope folder (from 'latentscope encode')")
    parser.add_argument("--model", help="model with a denoiser over the scope's autoencoder (default: the scope's model)")
    parser.add_argument("--name", default="default", help="name of the stored scores (default: default)")
    parser.add_argument("--method", default="diffusion",
                        choices=("diffusion", "roundtrip", "knn-latent", "iforest-latent", "pca-pixel", "knn-pixel"),
                        help="diffusion reconstruction (default) or a baseline")
    parser.add_argument("--levels", type=fraction, nargs="+", help="noise levels t in [0, 1]; 0 = autoencoder round trip "
                        "(default: 0 0.1)")
    parser.add_argument("--steps", type=positive_int, help="DDIM steps per level (default 5)")
    parser.add_argument("--draws", type=positive_int, help="noise draws averaged per level (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the noise and the reference sample (default 0)")
    parser.add_argument("--terms", nargs="+", choices=("local", "global", "latent", "density", "style", "content", "gist"),
                        help="image terms combined into the score (default: local content gist)")
    parser.add_argument("--top-k", type=fraction, help="share of the heatmap averaged into the local term (default 0.01)")
    parser.add_argument("--neighbours", type=non_negative_int, help="nearest reference images (by the denoiser's features) whose "
                        "error maps calibrate each image's heatmap; 0 = all reference images (default 16)")
    parser.add_argument("--reference", help="scope of known-normal images (same model) to calibrate against "
                        "(default: a sample of SCOPE itself)")
    parser.add_argument("--reference-size", type=positive_int, default=512, help="reference images used (default 512)")
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--workers", type=positive_int, help="image-loading threads (default: up to 4)")
    parser.add_argument("--no-maps", action="store_true", help="do not store heatmaps (they are recomputed on demand)")
    parser.add_argument("--force", action="store_true", help="score again even when the stored scores are up to date "
                        "(same settings, model and images)")
    parser.add_argument("--top", type=non_negative_int, default=10, help="list this many most anomalous images at the end (default 10)")
    parser.add_argument("--truth", metavar="COLUMN[=VALUE]",
                        help="then measure every stored score of the scope (AUROC, AUPR, F1-max, top-N precision) against "
                        "the images a true/false metadata column or tag marks as anomalous, or COLUMN=VALUE "
                        "(label=VALUE for labels); see 'latentscope annotate'")
    parser.add_argument("--export", metavar="FOLDER", type=output_folder, help="write heatmap overlays of the --top images as PNG files here, with top.csv (rank, id, file, score)")
    add_device_options(parser)
    add_engine_options(parser)
    parser.set_defaults(func=run)


def diffusion_options(args: argparse.Namespace) -> dict:
    """Options the user set (unset ones keep the library's defaults)."""
    chosen = {"levels": args.levels, "steps": args.steps, "draws": args.draws, "top_k": args.top_k, "terms": args.terms,
              "neighbours": args.neighbours}
    options = {k: v for k, v in chosen.items() if v is not None}
    if options and args.method != "diffusion":
        raise_option_error(f"--{next(iter(options)).replace('_', '-')} applies to --method diffusion only")
    return options


def raise_option_error(message: str):
    from ..errors import InputError

    raise InputError(message)


def run(args: argparse.Namespace) -> int:
    from ..anomaly import export_top, score
    from ..anomaly.truth import evaluate_stored, truth_labels, truth_lines

    options = diffusion_options(args)
    if args.truth:
        truth_labels(args.scope, args.truth)  # a wrong column is reported before any scoring
    summary = score(
        args.scope,
        args.model,
        name=args.name,
        method=args.method,
        reference=args.reference,
        reference_size=args.reference_size,
        batch_size=args.batch_size,
        workers=args.workers,
        maps=not args.no_maps,
        top=args.top,
        device=args.device,
        dtype=args.dtype,
        progress=args.progress,
        seed=args.seed,
        engine=args.engine,
        ray_address=args.ray_address,
        ray_actors=args.ray_actors,
        force=args.force,
        **options,
    )
    print("\n".join(summary.lines()))
    if args.export and summary.top is not None:
        table = export_top(args.scope, args.export, summary.top, name=args.name, model=args.model, device=args.device)
        print(f"heatmaps of the top {len(summary.top)} written to {args.export}, listed in {table.name}")
    if args.truth:
        print("\n".join(truth_lines(evaluate_stored(args.scope, args.truth), args.truth)))
    return 0

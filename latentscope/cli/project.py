"""``latentscope project SCOPE``: UMAP map of the latents, stored in the scope."""

from __future__ import annotations

import argparse

from .common import non_negative_int, positive_float, positive_int


def register(subparsers) -> None:
    from ..projection.neighbors import METRICS
    from ..projection.model import INITS
    from ..projection.quality import DEFAULT_SAMPLE
    from ..projection.scale import SAMPLE_SIZE, SAMPLE_THRESHOLD

    parser = subparsers.add_parser(
        "project",
        help="make a 2-D (or 3-D) UMAP map of a scope's latents",
        description="Reduce the latents with PCA (when wide), find their nearest neighbours (cached in the scope, so "
        "later maps of the same images reuse them), lay them out with UMAP and store the map as "
        "maps/NAME.parquet with its parameters and a quality report in scope.json.",
    )
    parser.add_argument("scope", help="scope folder made by 'latentscope encode'")
    parser.add_argument("--name", default="default", help="map name (default: default)")
    parser.add_argument("--n-neighbors", type=positive_int, default=15, help="neighbourhood size: larger keeps more global structure (default 15)")
    parser.add_argument("--min-dist", type=float, default=0.1, help="how tightly points may pack, 0 to --spread (default 0.1)")
    parser.add_argument("--spread", type=positive_float, default=1.0, help="scale of the embedded points (default 1.0)")
    parser.add_argument("--metric", choices=METRICS, default="euclidean", help="distance between (PCA-reduced) latents")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same map (default 0)")
    parser.add_argument("--dims", type=int, choices=(2, 3), default=2, help="map dimensions (default 2)")
    parser.add_argument("--pca", type=non_negative_int, default=50, metavar="N",
                        help="reduce latents with more than N values to N principal components first; 0 = never (default 50)")
    parser.add_argument("--epochs", type=positive_int, default=None, help="layout epochs (default: 200, or 60 with --warm-start)")
    parser.add_argument("--init", choices=INITS, default="spectral", help="starting layout (default spectral)")
    parser.add_argument("--warm-start", metavar="MAP", help="start from the coordinates of an existing map of the same images")
    parser.add_argument("--add-new", action="store_true",
                        help="only place images encoded since map NAME was made onto it (existing positions stay)")
    parser.add_argument("--quality-sample", type=positive_int, default=DEFAULT_SAMPLE,
                        help=f"query points for the trustworthiness estimate (default {DEFAULT_SAMPLE})")
    parser.add_argument("--no-quality", action="store_true", help="skip the quality report")
    parser.add_argument("--rebuild-index", action="store_true", help="recompute PCA and neighbours even if cached")
    parser.add_argument("--sample-threshold", type=non_negative_int, default=SAMPLE_THRESHOLD, metavar="N",
                        help=f"above N images, fit the map on a random sample and place the rest with transform; "
                        f"0 = never (default {SAMPLE_THRESHOLD:,})")
    parser.add_argument("--sample-size", type=positive_int, default=SAMPLE_SIZE, metavar="N",
                        help=f"images in that sample (default {SAMPLE_SIZE:,})")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..projection import place_new, project

    if args.add_new:
        summary = place_new(args.scope, args.name, progress=args.progress)
    else:
        summary = project(
            args.scope, args.name, n_neighbors=args.n_neighbors, min_dist=args.min_dist, metric=args.metric, seed=args.seed,
            dims=args.dims, pca_components=args.pca, n_epochs=args.epochs, init=args.init, warm_start=args.warm_start,
            spread=args.spread, quality=not args.no_quality, quality_sample=args.quality_sample,
            rebuild_index=args.rebuild_index, sample_threshold=args.sample_threshold or None, sample_size=args.sample_size,
            progress=args.progress,
        )
    print("\n".join(summary.lines()))
    return 0

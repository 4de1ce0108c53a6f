"""``latentscope eval-anomaly --model M --train NORMAL --test TEST``"""

from __future__ import annotations

import argparse

from .common import fraction, image_size, positive_int, writable_file


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval-anomaly",
        help="measure the diffusion score and the baselines on labelled images (AUROC, AUPR, F1-max, pixel AUROC)",
        description="Fit every method on the normal images under --train (the images the model was trained on, or "
        "others like them), score the images under --test and report image AUROC, AUPR and F1-max, and pixel AUROC "
        "where masks exist, in one table. Test labels are the first folder of each path (test/good/x.png -> good); "
        "labels in --normal-label are normal, each other label is one anomaly class (the semantic protocol). "
        "--defects adds the defects protocol: copies of the normal test images with synthetic local defects and "
        "their masks. --masks reads defect masks in the MVTec layout (MASKS/<label>/<name>_mask.png).",
    )
    parser.add_argument("--model", required=True, help="model folder with vae/ and unet/ (from 'latentscope train')")
    parser.add_argument("--train", required=True, help="folder of normal images to fit and calibrate on")
    parser.add_argument("--test", required=True, help="folder of test images, one subfolder per label")
    parser.add_argument("--normal-label", nargs="+", default=["good"], help="labels of normal test images (default: good)")
    parser.add_argument("--masks", help="folder of ground-truth masks, MASKS/<label>/<name>_mask.png")
    parser.add_argument("--defects", nargs="*", metavar="KIND", help="add the defects protocol (kinds: blob scratch blur "
                        "colour noise; default all)")
    parser.add_argument("--methods", nargs="+", help="methods to compare (default: diffusion and every baseline)")
    parser.add_argument("--levels", type=fraction, nargs="+", help="diffusion noise levels (default 0 0.1)")
    parser.add_argument("--steps", type=positive_int, help="DDIM steps per level (default 5)")
    parser.add_argument("--draws", type=positive_int, help="noise draws per level (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference-size", type=positive_int, default=512, help="training images the diffusion score "
                        "calibrates on (default 512)")
    parser.add_argument("--size", type=image_size, help="image size (default: the model's)")
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--json", metavar="FILE", type=writable_file, help="also write every figure as JSON")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..anomaly.evaluate import evaluate_folders
    from .score import raise_option_error

    options = {k: v for k, v in {"levels": args.levels, "steps": args.steps, "draws": args.draws}.items() if v is not None}
    if args.defects is not None and not args.normal_label:
        raise_option_error("--defects needs normal test images (--normal-label)")
    report, described = evaluate_folders(
        args.model, args.train, args.test, normal_labels=args.normal_label, masks=args.masks, defects=args.defects,
        methods=args.methods, options=options, seed=args.seed, reference_size=args.reference_size, size=args.size,
        batch_size=args.batch_size, device=args.device, progress=args.progress,
    )
    print(described)
    print(report.markdown())
    if args.json:
        from ..fileio import write_json

        write_json(args.json, {"rows": report.rows, "seconds": report.seconds, "options": options})
        print(f"figures written to {args.json}")
    return 0

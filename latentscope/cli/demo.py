"""``latentscope demo``"""

from __future__ import annotations

import argparse

from ..runtime import DEVICE_CHOICES


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the pipeline on scikit-learn's handwritten digits with the shipped model",
        description="Write scikit-learn's 1,797 handwritten digits as PNG files, encode them with the model shipped "
        "inside latentscope (builtin:digits), and run the later stages that are installed. Rerunning reuses the work.",
    )
    parser.add_argument("--workdir", help="folder for the images and the scope (default: the latentscope cache folder)")
    parser.add_argument("--retrain", action="store_true", help="train a new model on the digits instead of the shipped one (minutes)")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="where models run (default: auto)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    run_demo(args.workdir, retrain=args.retrain, device=args.device, progress=args.progress, report=print)
    return 0

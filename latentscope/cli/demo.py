"""``latentscope demo``"""

from __future__ import annotations

import argparse

from ..runtime import DEVICE_CHOICES
from .common import positive_int


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the pipeline on scikit-learn's handwritten digits with the shipped model",
        description="Write scikit-learn's 1,797 handwritten digits as PNG files, encode them with the model shipped "
        "inside latentscope (builtin:digits), make the map, and serve the explorer on 127.0.0.1. Rerunning reuses the work.",
    )
    parser.add_argument("--workdir", help="folder for the images and the scope (default: the latentscope cache folder)")
    parser.add_argument("--retrain", action="store_true", help="train a new model on the digits instead of the shipped one (minutes)")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="where models run (default: auto)")
    parser.add_argument("--port", type=positive_int,
                        help="port of the explorer on 127.0.0.1 (default: the first free one from 8050 on)")
    parser.add_argument("--no-serve", action="store_true", help="stop after the stages instead of serving the explorer")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    from ..errors import InputError

    if args.port is not None and args.port > 65535:
        raise InputError(f"--port {args.port}: must be at most 65535")
    run_demo(args.workdir, retrain=args.retrain, device=args.device, progress=args.progress, report=print,
             serve=not args.no_serve, port=args.port)
    return 0

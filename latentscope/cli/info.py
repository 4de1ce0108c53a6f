"""``latentscope info SCOPE``: what a scope holds."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "info",
        help="what a scope holds: images, model, maps, scores and metadata",
        description="Print what a scope holds, read from its own files: the model, how many images were encoded or "
        "skipped (and why), each map with its quality, each stored score with its settings, and each metadata "
        "column (tags with how many images they mark). Nothing is computed again.",
    )
    parser.add_argument("scope", help="scope folder")
    parser.add_argument("--json", action="store_true", help="print the facts as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..info import describe, info_lines

    facts = describe(args.scope)
    print(json.dumps(facts, indent=2, default=str) if args.json else "\n".join(info_lines(facts)))
    return 0

"""``latentscope doctor SCOPE``: report and repair damage."""

from __future__ import annotations

import argparse

from .common import add_device_options


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check a scope and repair what can be repaired",
        description="Check a scope for damage (truncated latents, manifest/latents disagreement, missing or unreadable "
        "maps and scores, half-written files) and repair it: lost latent rows are re-encoded from the images, orphan "
        "rows dropped, unreadable files moved to .damaged/. Every action is reported.",
    )
    parser.add_argument("scope", help="scope folder")
    parser.add_argument("--dry-run", action="store_true", help="only report; change nothing")
    parser.add_argument("--model", help="model for re-encoding lost rows (default: the scope's)")
    add_device_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..doctor import diagnose

    report = diagnose(args.scope, repair=not args.dry_run, model=args.model, device=args.device)
    print("\n".join(report.lines()))
    return 0 if report.healthy else 1

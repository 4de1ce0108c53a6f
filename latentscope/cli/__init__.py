"""``latentscope`` command line: one subcommand per stage, thin over the library.

Each subcommand lives in its own module exposing ``register(subparsers)``; errors
a user can fix (:class:`~latentscope.errors.LatentscopeError`) print one line and
exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from .. import __version__
from ..errors import LatentscopeError

SUBCOMMANDS = ("demo", "train", "encode", "annotate", "project", "score", "eval-anomaly", "walk", "serve", "info", "doctor")

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class OneLineErrorParser(argparse.ArgumentParser):
    """Usage mistakes print one line (not the whole usage block) and exit with status 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="latentscope",
        description="Explore the latent space of diffusion-model autoencoders on your own images.",
    )
    parser.add_argument("--version", action="version", version=f"latentscope {__version__}")
    _add_output_options(parser, argparse.SUPPRESS)
    parser.set_defaults(verbose=0, quiet=False)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.add_parser = _with_output_options(subparsers.add_parser)
    for name in SUBCOMMANDS:
        importlib.import_module(f".{name.replace('-', '_')}", __name__).register(subparsers)
    return parser


def _add_output_options(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=default, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", default=default, help="only warnings and errors; no progress bars")


def _with_output_options(add_parser):
    """Let -v / -q stand before or after the subcommand."""

    def add(*args, **kwargs):
        sub = add_parser(*args, **kwargs)
        _add_output_options(sub, argparse.SUPPRESS)
        return sub

    return add


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # diffusers and huggingface_hub are chatty about optional accelerators; keep the console for our output
    for noisy in ("diffusers", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(max(level, logging.ERROR))
    try:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv  # the command as typed, recorded by stages that write provenance (train's model card)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    _configure_logging(args.verbose, args.quiet)
    _line_buffered_stdout()
    args.progress = not args.quiet
    try:
        return int(args.func(args) or 0)
    except LatentscopeError as exc:
        message = " ".join(str(exc).split())
        print(f"latentscope {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"latentscope {args.command}: interrupted; finished work is kept, rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _line_buffered_stdout() -> None:
    """Report lines (the explorer's URL above all) reach a log file or pipe at once, not when a buffer fills."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure:
        reconfigure(line_buffering=True)


if __name__ == "__main__":
    sys.exit(main())

"""Argument types and options shared by subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..runtime import DEVICE_CHOICES, DTYPE_CHOICES


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1" if minimum == 1 else f"{value} must be 0 or more")
    if value > 10**9:
        raise argparse.ArgumentTypeError(f"{value} is absurdly large")
    return value


def positive_int(text: str) -> int:
    return _whole_number(text, 1)


def non_negative_int(text: str) -> int:
    return _whole_number(text, 0)


def writable_file(text: str) -> str:
    """An output file whose folder exists (checked before any work, so a typo costs nothing)."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: is a folder; give a file name")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: folder {path.parent} does not exist")
    return text


def output_folder(text: str) -> str:
    """A folder to write into: new, or an existing folder (not a file)."""
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: is a file; give a folder")
    return text


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} must be between 0 and 1")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{value} must be a positive number")
    return value


def image_size(text: str) -> tuple[int, int]:
    """``64`` or ``48x64`` (height x width)."""
    parts = text.lower().split("x")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a size like 64 or 48x64") from None
    if len(numbers) == 1:
        numbers = numbers * 2
    if len(numbers) != 2 or min(numbers) < 8 or max(numbers) > 16384:
        raise argparse.ArgumentTypeError(f"{text!r}: sizes run from 8 to 16384 pixels")
    return numbers[0], numbers[1]


def add_device_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="where models run (default: auto = GPU when present)")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help="model precision (default: float32 on CPU, bfloat16 on GPU)")


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine", "run on this machine, or on a Ray cluster (pip install latentscope[ray])")
    group.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="local: threads and one model in this process (default); ray: Ray Data tasks and model actors")
    group.add_argument("--ray-address", metavar="ADDR",
                       help="Ray cluster to use (auto, ray://head:10001, ...; default: $RAY_ADDRESS or a new local one)")
    group.add_argument("--ray-actors", type=positive_int, metavar="N",
                       help="model actors (default: one per GPU, or one per CPU on a CPU-only cluster)")


def add_model_option(parser: argparse.ArgumentParser, required: bool = True, default: str | None = None) -> None:
    parser.add_argument(
        "--model",
        required=required and default is None,
        default=default,
        help="model folder, pipeline folder (uses vae/), Hugging Face Hub id, or builtin:digits",
    )

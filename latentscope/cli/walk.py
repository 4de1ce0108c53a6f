"""``latentscope walk SCOPE --from ID --to ID --method slerp --steps 24 --out morph.gif``"""

from __future__ import annotations

import argparse

from .common import add_device_options, fraction, image_size, non_negative_int, positive_float, positive_int

EPILOG = """\
ends: an image id (12 or id:12), an image of the scope by its path as 'info' and
'score' list it (cats/tabby.png), an image file (encoded like the scope's images),
or a map point map:X,Y (with --map NAME).

examples:
  latentscope walk digits.scope --from 3 --to 41 --out morph.gif --size 256
  latentscope walk digits.scope --from 3 --via 17 --via 29 --to 41 --loop --method slerp --even --out loop.mp4
  latentscope walk digits.scope --from 3 --to 41 --method data-path --out sheet.png --layout sheet
  latentscope walk digits.scope --from 3 --to 41 --method noise-slerp --polish 0.2 --out dream.gif
  latentscope walk digits.scope --from 3 --direction label:1 label:7 --strength -1 1 --out direction.gif
  latentscope walk --replay morph.gif.json --out again.gif
"""


def frame_size(text: str):
    """``256`` (the longer side; keeps the aspect) or ``256x320`` (height x width)."""
    pair = image_size(text)
    return pair if "x" in text.lower() else pair[0]


def register(subparsers) -> None:
    from ..walks.core import METHODS
    from ..walks.export import LAYOUTS, RESAMPLING

    parser = subparsers.add_parser(
        "walk",
        help="morph one image into another through latent space and export GIF / MP4 / PNG",
        description="Interpolate between images of a scope (or files, or map points), decode the frames and write "
        "a GIF, MP4, PNG strip or contact sheet with a sidecar JSON that reproduces it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("scope", nargs="?", help="scope folder made by 'latentscope encode'")
    ends = parser.add_argument_group("where the walk goes")
    ends.add_argument("--from", dest="start", metavar="END", help="first end")
    ends.add_argument("--to", dest="stop", metavar="END", help="last end")
    ends.add_argument("--via", action="append", default=[], metavar="END", help="pass through this end on the way (repeatable)")
    ends.add_argument("--loop", action="store_true", help="close the walk: return from the last end to the first")
    ends.add_argument("--direction", nargs=2, metavar=("GROUP_A", "GROUP_B"),
                      help="move --from along mean(B) - mean(A); a group is label:NAME, ids:1,2,3 or COLUMN=VALUE (metadata)")
    ends.add_argument("--strength", type=float, nargs=2, default=(0.0, 1.0), metavar=("LO", "HI"),
                      help="direction strength range (default 0 1: from the image to image + mean(B) - mean(A))")
    ends.add_argument("--map", dest="map_name", default="default", help="map whose coordinates map:X,Y ends refer to")
    ends.add_argument("--replay", metavar="SIDECAR", help="rebuild the walk recorded in an export's .json sidecar")

    how = parser.add_argument_group("how frames are made")
    how.add_argument("--method", choices=METHODS, default="slerp", help="interpolant (default: slerp)")
    how.add_argument("--steps", type=positive_int, default=24, help="number of frames (default 24)")
    how.add_argument("--even", action="store_true", help="space frames by equal image change, not equal latent steps")
    how.add_argument("--polish", type=fraction, metavar="T", help="denoise each frame from noise level T (e.g. 0.2) to pull it onto the data")
    how.add_argument("--polish-steps", type=positive_int, default=4, help="DDIM steps of the polish (default 4)")
    how.add_argument("--noise-level", type=fraction, help="noise-slerp: level t the ends are DDIM-inverted to (default: auto, "
                     "the noisiest level where inversion stays well conditioned, alpha_bar >= 0.02)")
    how.add_argument("--ddim-steps", type=positive_int, default=25, help="noise-slerp: DDIM steps (default 25)")
    how.add_argument("--neighbours", type=positive_int, default=10, help="data-path: neighbours per image in the graph (default 10)")
    how.add_argument("--seed", type=int, default=0, help="seed of the polish noise")
    how.add_argument("--refine-ends", type=non_negative_int, default=0, metavar="STEPS",
                     help="fit each image end's latent to its image for STEPS steps (e.g. 50), so the walk starts and "
                     "stops on frames closer to the real images")
    how.add_argument("--model", help="autoencoder to decode with (default: the scope's model)")
    how.add_argument("--denoiser", help="model folder with unet/ for noise-slerp and --polish (default: --model or the scope's model)")
    how.add_argument("--batch-size", type=positive_int, default=64)
    add_device_options(how)

    out = parser.add_argument_group("output")
    out.add_argument("--out", required=True, help="output file: .gif, .mp4 or .png (a sidecar <out>.json is written beside it)")
    out.add_argument("--fps", type=positive_float, help="frames per second (default 12)")
    out.add_argument("--size", type=frame_size, help="output size: 256 (longer side) or 256x320 (height x width); default: the model's")
    out.add_argument("--resample", choices=tuple(RESAMPLING), help="how frames are resized (default nearest)")
    out.add_argument("--pingpong", action="store_true", default=None, help="play forward then backward")
    out.add_argument("--once", action="store_true", default=None, help="GIF plays once instead of repeating")
    out.add_argument("--layout", choices=LAYOUTS, help=".png: contact sheet or a single-row strip (default sheet)")
    out.add_argument("--columns", type=positive_int, help=".png sheet: frames per row (default: about square)")
    parser.set_defaults(func=run)


def spec_from_args(args: argparse.Namespace):
    from ..errors import InputError
    from ..walks.core import WalkSpec

    if args.start is None:
        raise InputError("give --from (and --to, or --direction), or --replay SIDECAR")
    if args.direction and (args.stop is not None or args.via):
        raise InputError("--direction moves the --from image; drop --to and --via")
    ends = [args.start, *args.via] + ([args.stop] if args.stop is not None else [])
    direction = None
    if args.direction:
        direction = {"from": args.direction[0], "to": args.direction[1], "strength": list(args.strength)}
    elif args.stop is None and not (args.loop and args.via):
        raise InputError("give --to (or --via with --loop, or --direction GROUP_A GROUP_B)")
    return WalkSpec(
        ends=ends, method=args.method, steps=args.steps, loop=args.loop, even=args.even, polish=args.polish,
        polish_steps=args.polish_steps, seed=args.seed, noise_level=args.noise_level, ddim_steps=args.ddim_steps,
        neighbours=args.neighbours, direction=direction, map_name=args.map_name, refine_ends=args.refine_ends,
    )


EXPORT_DEFAULTS = {"fps": 12.0, "size": None, "resample": "nearest", "pingpong": False, "once": False, "layout": "sheet", "columns": None}


def export_options(args: argparse.Namespace, recorded: dict) -> dict:
    """Export settings: those given on the command line, else those of a replayed sidecar, else the defaults."""
    from_sidecar = {"fps": recorded.get("requested_fps"), "size": recorded.get("size"), "resample": recorded.get("resample"),
                    "pingpong": recorded.get("pingpong"), "once": None if "repeat" not in recorded else not recorded["repeat"],
                    "layout": recorded.get("layout"), "columns": recorded.get("columns")}
    chosen = {}
    for name, default in EXPORT_DEFAULTS.items():
        given = getattr(args, name)
        chosen[name] = given if given is not None else from_sidecar[name] if from_sidecar[name] is not None else default
    chosen["repeat"] = not chosen.pop("once")
    return chosen


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..walks.core import Walker
    from ..walks.export import check_output
    from ..walks.replay import read_sidecar, replay

    check_output(args.out)
    recorded = {}
    if args.replay:
        walk = replay(args.replay, scope=args.scope, model=args.model, denoiser=args.denoiser, device=args.device, dtype=args.dtype)
        recorded = read_sidecar(args.replay).get("export") or {}
    else:
        if args.scope is None:
            raise InputError("give the SCOPE folder (or --replay SIDECAR)")
        spec = spec_from_args(args)
        walker = Walker(args.scope, model=args.model, denoiser=args.denoiser, device=args.device, dtype=args.dtype,
                        batch_size=args.batch_size, progress=args.progress)
        walk = walker.run(spec)
    summary = walk.metrics().summary
    sidecar = walk.save(args.out, metrics=summary, **export_options(args, recorded))
    print(f"wrote {args.out} ({len(walk)} frames, {walk.spec.method}) and {sidecar}")
    print("through " + " -> ".join(walk.info["knots"]) + (" -> back" if walk.spec.loop else ""))
    line = (f"step change (RMS pixels): mean {summary['mean_rms_step']:.4f}, max {summary['max_rms_step']:.4f}; "
            f"evenness {summary['evenness']:.3f}")
    if "mean_nearest_real_relative" in summary:
        line += f"; distance to nearest real image {summary['mean_nearest_real_relative']:.2f} x typical spacing"
    print(line)
    if walk.info.get("inversion_error"):
        print(f"noise-slerp from level t={walk.info['noise_level']:.3f}; inversion round-trip error (relative RMS, "
              "blended out along the walk): " + ", ".join(f"{e:.3f}" for e in walk.info["inversion_error"]))
    print(f"time {walk.info['seconds']['total']:.2f} s")
    return 0

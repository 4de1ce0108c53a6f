"""Attach your own per-image table to a scope: labels for the map's quality report, columns to colour and
group by, tags, and direction walks between groups named by a column.

    python examples/annotate_metadata.py                         # digits demo images, shipped demo model
    python examples/annotate_metadata.py --quick --model M       # 150 digits, for tests

The table is what a user typically has beside an image folder: a CSV keyed by file name (here without the
folder or the extension), with a measured value (ink: the share of dark pixels) and two attributes of each
digit (even or odd; drawn with a closed loop or not). Writes, into --out: ``metadata.csv``, the scope, and
``loop-direction.png`` (a digit pushed from the mean loop-less digit toward the mean digit with a loop).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

import latentscope
from latentscope.datasets import write_digits
from latentscope.info import describe, info_lines
from latentscope.metadata import annotate, set_tag
from latentscope.projection import project
from latentscope.scope import Scope
from latentscope.walks import walk

LOOPED = {"0", "6", "8", "9"}


def user_table(images: Path) -> pd.DataFrame:
    """One row per image file, as a user's own spreadsheet would have it."""
    rows = []
    for path in sorted(images.rglob("*.png")):
        digit = path.parent.name
        with Image.open(path) as image:
            ink = float((np.asarray(image.convert("L")) < 128).mean())
        rows.append({"image": path.stem, "parity": "even" if int(digit) % 2 == 0 else "odd",
                     "loop": "yes" if digit in LOOPED else "no", "ink": round(ink, 4)})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:digits")
    parser.add_argument("--out", help="output folder (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="150 digits, fewer layout epochs")
    args = parser.parse_args()

    work = Path(args.out or tempfile.mkdtemp(prefix="latentscope-metadata-"))
    images = write_digits(work / "digits", limit=150 if args.quick else None)
    scope_dir = work / "digits.scope"
    latentscope.encode(images, args.model, scope_dir, progress=False, thumbnails=False)
    user_table(images).to_csv(work / "metadata.csv", index=False)

    # 1. attach the table: the 'image' column names files by stem; 'parity' becomes the images' labels
    summary = annotate(scope_dir, work / "metadata.csv", label="parity")
    print("\n".join(summary.lines()))
    scope = Scope(scope_dir)
    print("labels now:", dict(scope.ok_manifest()["label"].value_counts().sort_index()))

    # 2. the map's quality report measures how well neighbours on the map share the new labels
    mapped = project(scope_dir, "default", seed=0, n_epochs=100 if args.quick else None, progress=False)
    print("\n".join(line for line in mapped.lines() if "label agreement" in line))

    # 3. tag the inkiest tenth of the images (the explorer's Select tab does the same for a selection)
    table = scope.metadata()
    heavy = table.nlargest(max(1, len(table) // 10), "ink")["id"]
    print(f"tagged {set_tag(scope_dir, 'heavy', heavy)} images 'heavy'")
    print("metadata columns:", ", ".join(c for c in Scope(scope_dir).metadata().columns if c != "id"))

    # 4. a direction walk between the groups a column names: from loop=no toward loop=yes
    start = int(Scope(scope_dir).ok_manifest().query("label == 'odd'")["id"].iloc[0])
    frames = walk(scope_dir, start, model=args.model, method="lerp", steps=6 if args.quick else 12,
                  direction={"from": "loop=no", "to": "loop=yes", "strength": (0, 1.5)})
    frames.save(work / "loop-direction.png", layout="strip", size=64)
    print(f"direction walk loop=no -> loop=yes from image {start}: {len(frames)} frames in loop-direction.png")

    # 5. what the scope holds now (the same as 'latentscope info')
    print("\n".join(info_lines(describe(scope_dir))))


if __name__ == "__main__":
    main()

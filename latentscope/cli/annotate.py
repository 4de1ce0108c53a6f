"""``latentscope annotate SCOPE TABLE``: attach per-image metadata (labels, captions, any columns) to a scope."""

from __future__ import annotations

import argparse

EPILOG = """examples:
  latentscope annotate photos.scope labels.csv                    # key column found by name or by what matches
  latentscope annotate photos.scope meta.parquet --key file --label species
  latentscope annotate photos.scope flags.tsv --columns reviewed defect --replace
"""


def register(subparsers) -> None:
    from ..metadata import MATCHES

    parser = subparsers.add_parser(
        "annotate",
        help="attach a CSV / Parquet / JSON table of per-image metadata (labels, captions, any columns)",
        description="Match the rows of a table to the scope's images by a key column (a path relative to the image "
        "folder or to a folder above it, an absolute path, a file name, a file name without extension, or an image "
        "id) and store its columns as metadata/default.parquet. The explorer colours by them and shows them, walks "
        "take COLUMN=VALUE groups, and a 'label' column (or --label COLUMN) replaces the folder-name labels. "
        "Attaching another table adds its columns.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("scope", help="scope folder made by 'latentscope encode'")
    parser.add_argument("table", help="table file: .csv, .tsv, .parquet, .json (records) or .jsonl")
    parser.add_argument("--key", help="column naming the images (default: one called path, file, filename, image, "
                        "name or id, else the column that matches most images)")
    parser.add_argument("--match", choices=MATCHES, default="auto",
                        help="how key values name images (default auto: whichever of path, name, stem matches most)")
    parser.add_argument("--label", metavar="COLUMN", help="use this column as the images' labels")
    parser.add_argument("--columns", nargs="+", metavar="COLUMN", help="keep only these columns")
    parser.add_argument("--replace", action="store_true", help="drop the metadata attached before")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..metadata import annotate

    summary = annotate(args.scope, args.table, key=args.key, match=args.match, label=args.label,
                       columns=args.columns, replace=args.replace)
    print("\n".join(summary.lines()))
    return 0

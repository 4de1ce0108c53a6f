"""Make a UMAP map of a scope, place new points on it, and decode what lives at places on the map.

    python examples/project_map.py                         # digits demo images, shipped demo model
    python examples/project_map.py --scope photos.scope    # an existing scope (made by latentscope encode)
    python examples/project_map.py --quick --model M       # 150 digits, for tests

Writes, beside the scope: ``map_grid.png`` (decoded latents on a 5 x 5 grid over the map: "what lives
here"), and prints the map's quality report, a walk between two images placed on the map, and the
nearest real images of a point on the map.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

import latentscope
from latentscope.codec import Codec
from latentscope.datasets import write_digits
from latentscope.projection import load_projection, nearest_images, project
from latentscope.projection.store import quality_lines
from latentscope.scope import Scope


def grid_image(tiles: np.ndarray, rows: int) -> Image.Image:
    """N x H x W x 3 uint8 tiles -> one mosaic, ``rows`` tiles high, top row = top of the map."""
    n, h, w, _ = tiles.shape
    cols = n // rows
    mosaic = tiles.reshape(rows, cols, h, w, 3).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, 3)
    return Image.fromarray(mosaic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scope", help="an existing scope (default: encode the digits demo images first)")
    parser.add_argument("--model", default="builtin:digits", help="model for encoding the demo images")
    parser.add_argument("--quick", action="store_true", help="150 digits, fewer layout epochs")
    args = parser.parse_args()

    if args.scope:
        scope_path = Path(args.scope)
    else:
        work = Path(tempfile.mkdtemp(prefix="latentscope-map-"))
        images = write_digits(work / "digits", limit=150 if args.quick else None)
        scope_path = work / "digits.scope"
        latentscope.encode(images, args.model, scope_path, progress=not args.quick, thumbnails=False)

    # 1. the map: PCA, cached neighbours, UMAP layout, quality report, stored in the scope
    summary = project(scope_path, "default", seed=0, n_epochs=100 if args.quick else None, progress=not args.quick)
    print("\n".join(summary.lines()))

    # 2. a second map of the same images reuses the cached neighbour graph and starts from the first
    loose = project(scope_path, "loose", seed=0, min_dist=0.5, warm_start="default", progress=not args.quick)
    print(f"second map: graph reused: {loose.index_reused}; {loose.seconds['total']:.1f}s "
          f"(first {summary.seconds['total']:.1f}s)")

    # 3. new points onto the map: a straight walk between two images, placed with transform
    scope = Scope(scope_path)
    projection = load_projection(scope, "default")
    ids = projection.ids_
    a, b = scope.latents_for_ids([ids[0], ids[-1]])
    walk = np.stack([(1 - t) * a + t * b for t in np.linspace(0, 1, 6)])
    path = projection.transform(walk)
    print("walk across the map: " + " -> ".join(f"({x:.1f}, {y:.1f})" for x, y in path))

    # 4. points off the map: decode a grid of map locations ("what lives here")
    lo, hi = projection.embedding_.min(0), projection.embedding_.max(0)
    xs, ys = np.linspace(lo[0], hi[0], 5), np.linspace(hi[1], lo[1], 5)
    grid = np.array([(x, y) for y in ys for x in xs])
    codec = Codec.from_pretrained(scope.model.get("reference") or args.model, device="cpu")
    tiles = codec.decode_to_pixels(projection.inverse_transform(grid).astype(np.float32))
    out = scope_path.parent / "map_grid.png"
    grid_image(tiles, 5).save(out)
    print(f"decoded a 5 x 5 grid over the map -> {out}")

    # 5. neighbours: the real images nearest to the latent at the centre of the map
    centre = projection.inverse_transform(grid[12:13])
    neighbour_ids, distances = nearest_images(projection, centre, 5)
    labels = scope.manifest().set_index("id").loc[neighbour_ids[0], "label"].tolist()
    print(f"nearest images to the map's centre: ids {neighbour_ids[0].tolist()} (labels {labels})")
    print("\n".join(quality_lines(scope.meta["maps"]["default"]["quality"])))


if __name__ == "__main__":
    main()

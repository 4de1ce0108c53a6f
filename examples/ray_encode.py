"""Encode a folder on a Ray cluster, and check the scope equals the one the local engine writes.

    pip install latentscope[ray]
    python examples/ray_encode.py                              # all 1,797 digits, a local Ray cluster of this machine
    python examples/ray_encode.py --address ray://head:10001   # an existing cluster (workers see the same paths)
    python examples/ray_encode.py --images ~/photos --model stabilityai/sd-vae-ft-mse --out photos.scope
    python examples/ray_encode.py --quick                      # 64 digits on a 2-CPU local cluster, for tests

The same from the command line: ``latentscope encode IMAGES --model M --out SCOPE --engine ray [--ray-address ADDR]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

import latentscope
from latentscope.datasets import write_digits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", help="folder of images (default: scikit-learn's digits written as PNG)")
    parser.add_argument("--model", default="builtin:digits")
    parser.add_argument("--out", help="scope folder for the Ray engine's result (default: a temporary folder)")
    parser.add_argument("--address", help="Ray cluster address (default: start a local cluster)")
    parser.add_argument("--actors", type=int, help="model actors (default: one per GPU, or one per CPU)")
    parser.add_argument("--quick", action="store_true", help="64 digits on a 2-CPU local cluster")
    args = parser.parse_args()

    import ray

    work = Path(tempfile.mkdtemp(prefix="latentscope-ray-example-"))
    images = args.images or write_digits(work / "digits", limit=64 if args.quick else None)
    out = Path(args.out or work / "ray.scope")
    if args.address:
        ray.init(address=args.address)
    else:
        ray.init(num_cpus=2 if args.quick else None, include_dashboard=False, logging_level="warning")
    resources = ray.cluster_resources()
    print(f"Ray cluster: {resources.get('CPU', 0):.0f} CPUs, {resources.get('GPU', 0):.0f} GPUs")

    summary = latentscope.encode(images, args.model, out, engine="ray", ray_actors=args.actors, progress=not args.quick)
    print("\n".join(summary.lines()))
    print("engine:", latentscope.Scope(out).meta["stages"]["encode"]["device"])
    ray.shutdown()

    # The local engine writes the same scope: same ids and rows, same failures, latents within float16 rounding.
    local = work / "local.scope"
    latentscope.encode(images, args.model, local, progress=False)
    a, b = pd.read_parquet(out / "images.parquet"), pd.read_parquet(local / "images.parquet")
    columns = ["id", "path", "sha256", "status", "error", "row"]
    same_manifest = a[columns].equals(b[columns])
    gap = np.abs(np.load(out / "latents.npy").astype(np.float32) - np.load(local / "latents.npy").astype(np.float32)).max()
    print(f"same manifest as the local engine: {same_manifest}; largest latent difference: {gap:.4f}")


if __name__ == "__main__":
    main()

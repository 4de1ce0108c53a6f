"""Find anomalous images in a scope: diffusion reconstruction scores, heatmaps, and the baselines side by side.

    python examples/score_anomalies.py                  # digits with pasted defects, the shipped model (a few minutes)
    python examples/score_anomalies.py --model MODEL    # any 32 px model from 'latentscope train' (with a denoiser)
    python examples/score_anomalies.py --quick          # fewer images and cheap settings (for tests)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import latentscope
from latentscope.anomaly import Heatmaps, Pool, defect_case, evaluate, export_heatmaps, paste_defects, score
from latentscope.codec import Codec
from latentscope.datasets import digits_array
from latentscope.denoiser import Denoiser


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:digits", help="model folder with vae/ and unet/ (default: builtin:digits)")
    parser.add_argument("--out", help="work folder (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="120 images, cheap settings (levels 0 and 0.1, 2 steps, 2 draws)")
    args = parser.parse_args()
    work = Path(args.out or tempfile.mkdtemp(prefix="latentscope-anomaly-"))
    images, _ = digits_array(32)
    options = dict(levels=(0.0, 0.1), steps=2, draws=2) if args.quick else {}
    model = args.model

    # 1. a scope of unseen digits, one in twenty with a synthetic defect pasted in
    count = 120 if args.quick else 400
    pixels = images[-count:].copy()
    defected = np.arange(0, count, 20)
    pixels[defected] = paste_defects(pixels[defected], seed=0).images
    scope = work / "digits.scope"
    latentscope.encode(pixels, model, scope, progress=False)

    # 2. score every image (resumable; scores/default.parquet + heatmaps), calibrated on the scope itself
    summary = score(scope, model, progress=False, top=len(defected), **options)
    print("\n".join(summary.lines()))
    found = len(set(summary.top["id"]) & set(defected.tolist()))  # ids follow file order = array order
    print(f"{found} of the {len(defected)} defective images are among the top {len(defected)}")

    # 3. heatmap overlays: one image as PNG bytes (what the dashboard shows), and a folder of PNG files
    render = Heatmaps(scope)
    png = render(int(summary.top["id"][0]))
    written = export_heatmaps(scope, work / "heatmaps", ids=summary.top["id"].tolist())
    print(f"heatmap of the most anomalous image: {len(png)} bytes of PNG; {len(written)} overlays in {work / 'heatmaps'}")

    # 4. the diffusion score and the baselines side by side on the defects protocol
    codec, denoiser = Codec.from_pretrained(model, device="cpu"), Denoiser.from_pretrained(model, device="cpu")
    pool = Pool(np.zeros((0, *images.shape[1:]), np.uint8))
    normal = pool.add(images[-count - 80 : -count])
    defect_case(pool, normal, seed=1)
    report = evaluate(codec, denoiser, images[: 200 if args.quick else 1000], pool, reference_size=64 if args.quick else 512,
                      options=options)
    print(report.markdown())


if __name__ == "__main__":
    main()

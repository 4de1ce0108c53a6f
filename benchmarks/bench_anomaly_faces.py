"""Anomaly scoring on a kind of image the score was never developed on: small grey faces against non-faces.

scikit-image ships ``lfw_subset``: 100 faces from Labeled Faces in the Wild and 100 non-face patches, 25 x 25
grey. Each seed splits the faces 80 / 20, trains a model on the 80 with ``latentscope train`` (its automatic
plan), and runs ``latentscope eval-anomaly`` on the 20 unseen faces against the 100 non-faces (semantic) and
against defect copies of those 20 faces (defects), exactly as a user would from the command line.

    python benchmarks/bench_anomaly_faces.py [--seeds 0 1 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.results import command_line, machine_line, write_section  # noqa: E402

FACES = 100  # lfw_subset: the first 100 images are faces, the other 100 are not
TRAIN_FACES = 80


def write_folders(root: Path, seed: int) -> tuple[Path, Path]:
    from PIL import Image
    from skimage.data import lfw_subset

    images = (lfw_subset() * 255).round().astype(np.uint8)
    order = np.random.default_rng(seed).permutation(FACES)
    train, test = root / "train", root / "test"
    for folder, rows in [(train / "face", order[:TRAIN_FACES]), (test / "face", order[TRAIN_FACES:]),
                         (test / "other", np.arange(FACES, len(images)))]:
        folder.mkdir(parents=True, exist_ok=True)
        for row in rows:
            Image.fromarray(images[row]).save(folder / f"{row:03d}.png")
    return train, test


def latentscope(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "latentscope", *args, "-q"], check=True, stdout=subprocess.DEVNULL)


def run_seed(seed: int, quick: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train, test = write_folders(root, seed)
        model, report = root / "model", root / "report.json"
        started = time.perf_counter()
        extra = ["--epochs", "2", "--denoiser-epochs", "2"] if quick else []
        latentscope("train", str(train), "--out", str(model), "--seed", str(seed), *extra)
        trained = time.perf_counter() - started
        latentscope("eval-anomaly", "--model", str(model), "--train", str(train), "--test", str(test),
                    "--normal-label", "face", "--defects", "--seed", str(seed), "--json", str(report))
        rows = json.loads(report.read_text())["rows"]
    auroc = {(row["case"], row["method"]): row["auroc"] for row in rows}
    protocols = {row["case"]: row["protocol"] for row in rows}  # labelled, defects, defects by kind
    return {"seed": seed, "train_seconds": trained, "auroc": auroc, "protocols": protocols}


def render(results: list[dict], quick: bool) -> str:
    methods = list(dict.fromkeys(method for _, method in results[0]["auroc"]))
    case_of = {protocol: case for case, protocol in results[0]["protocols"].items()}
    protocols = [(case_of["labelled"], "semantic (non-faces)"), (case_of["defects"], "defects")]
    kinds = [case for case, protocol in results[0]["protocols"].items() if protocol == "defects by kind"]
    lines = ["### Anomaly scores on unseen small grey faces (issue 6)", "",
             f"Command: `{command_line()}`, {machine_line()}" + (" (quick mode: 2 epochs)." if quick else "."), "",
             "scikit-image's `lfw_subset`: 100 faces and 100 non-face patches, 25 x 25 grey, fitted to 32 x 32. "
             "Each seed splits the faces 80 / 20, trains with `latentscope train` (automatic plan) on the 80, then "
             "runs `latentscope eval-anomaly --defects` on the 20 unseen faces against the 100 non-faces (semantic) "
             "and against defect copies of the 20 faces. Image AUROC; the score's options are the defaults, nothing "
             "was tuned on this set. 20 normal test images per seed, so each figure moves by a few hundredths "
             "between seeds.", "",
             "| seed | protocol | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for result in results:
        for key, label in protocols:
            values = [result["auroc"].get((key, m)) for m in methods]
            best = max(v for v in values if v is not None)
            cells = [("-" if v is None else (f"**{v:.3f}**" if v == best else f"{v:.3f}")) for v in values]
            lines.append(f"| {result['seed']} | {label} | " + " | ".join(cells) + " |")
    for key, label in protocols + [(kind, kind) for kind in kinds]:
        means = [np.mean([r["auroc"][(key, m)] for r in results]) for m in methods]
        lines.append(f"| mean | {label} | " + " | ".join(f"{v:.3f}" for v in means) + " |")
    minutes = np.mean([r["train_seconds"] for r in results]) / 60
    lines += ["", f"Training took {minutes:.1f} min per seed on average."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="2 training epochs, one seed; prints, writes nothing")
    args = parser.parse_args()
    seeds = args.seeds[:1] if args.quick else args.seeds
    results = []
    for seed in seeds:
        results.append(run_seed(seed, args.quick))
        print(json.dumps({"seed": seed, "auroc": {f"{c}/{m}": round(v, 3) for (c, m), v in results[-1]["auroc"].items()}}),
              flush=True)
    text = render(results, args.quick)
    if args.quick:
        print(text)
    else:
        write_section("anomaly-faces", text)


if __name__ == "__main__":
    main()

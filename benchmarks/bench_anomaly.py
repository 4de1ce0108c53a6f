"""Anomaly scores (issue 6): the default diffusion score and every baseline on both protocols, cost against quality,
and the scorer's throughput against its bare model calls. Writes the "anomaly" section of benchmarks/RESULTS.md.

    python benchmarks/bench_anomaly.py            # every task whose model is cached (trains the missing ones: slow)
    python benchmarks/bench_anomaly.py --quick    # small pools, for a smoke run

Models come from ``latentscope.train`` on each task's normal training split only (``benchmarks/anomaly_data.py``)
and are cached under ``benchmarks/data/anomaly/``. Reconstruction errors of the diffusion score are cached there
too, one file per (task, split, level, steps, draws): the default score and every point of the cost / quality sweep
are read off the same measurements (noise depends only on the seed and the image id, so a level measured alone
equals the same level measured together with others).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.anomaly_data import MODEL_DIR, Task, digits_task, photos_task  # noqa: E402
from benchmarks.results import command_line, machine_line, write_section  # noqa: E402
from latentscope.anomaly import DEFAULT_DRAWS, DEFAULT_LEVELS, DEFAULT_STEPS, Batch, DiffusionScore  # noqa: E402
from latentscope.anomaly.evaluate import Case, Pool, case_metrics, defect_case, semantic_cases  # noqa: E402
from latentscope.anomaly.reconstruct import LevelErrors, Reconstructor  # noqa: E402
from latentscope.anomaly.stage import build_method  # noqa: E402
from latentscope.codec import Codec  # noqa: E402
from latentscope.denoiser import Denoiser  # noqa: E402

log = logging.getLogger("bench_anomaly")

BASELINES = ("roundtrip", "knn-latent", "iforest-latent", "pca-pixel", "knn-pixel")
ERRORS_DIR = MODEL_DIR / "errors"
SEED = 0


# --------------------------------------------------------------------------- data


class Prepared:
    """One task's model, reference sample and test pool (normal test images, held-out classes, defect copies)."""

    def __init__(self, task: Task, reference_size: int, max_normal: int, max_per_class: int):
        self.task = task
        model = str(task.ensure_model())
        self.codec = Codec.from_pretrained(model, device="cpu")
        self.denoiser = Denoiser.from_pretrained(model, device="cpu")
        rng = np.random.default_rng([SEED, 11])
        self.train = task.train
        ref_rows = np.sort(rng.choice(len(task.train), min(reference_size, len(task.train)), replace=False))
        self.reference_rows = ref_rows
        normal = task.test_normal[np.sort(rng.choice(len(task.test_normal), min(max_normal, len(task.test_normal)), replace=False))]
        self.pool = Pool(np.zeros((0, *task.train.shape[1:]), np.uint8))
        normal_rows = self.pool.add(normal)
        chosen = {}
        for name, images in task.anomalies.items():
            keep = np.sort(rng.choice(len(images), min(max_per_class, len(images)), replace=False))
            chosen[name] = images[keep]
        semantic_cases(self.pool, normal_rows, chosen)
        defect_case(self.pool, normal_rows, seed=SEED)
        self.train_batch = Batch(task.train, self.codec.encode_pixels(task.train))
        self.reference = self.train_batch.take(ref_rows)
        ids = np.arange(len(self.pool.pixels)) + len(task.train)  # pool ids never collide with training ids
        self.test = Batch(self.pool.pixels, self.codec.encode_pixels(self.pool.pixels), ids)
        digest = hashlib.sha256(self.pool.pixels.tobytes() + ref_rows.tobytes()).hexdigest()[:12]
        self.key = f"{task.name}-{digest}"

    def errors(self, split: str, level: float, steps: int, draws: int, seconds: dict | None = None) -> LevelErrors:
        """Cached reconstruction errors of one level for ``split`` (``reference`` or ``test``)."""
        path = ERRORS_DIR / f"{self.key}-{split}-t{level:.3f}-s{steps}-d{draws}-seed{SEED}.npz"
        if path.exists():
            with np.load(path) as stored:
                if seconds is not None:
                    seconds[(split, level, steps, draws)] = float(stored["seconds"])
                return LevelErrors(stored["maps"], stored["latent"])
        batch = self.reference if split == "reference" else self.test
        rec = Reconstructor(self.codec, self.denoiser, (level,), steps, draws, SEED)
        started = time.perf_counter()
        parts = [rec.measure(batch.latents[i:i + 64], batch.take(slice(i, i + 64)).images_tensor(), batch.ids[i:i + 64])
                 for i in range(0, len(batch), 64)]
        spent = time.perf_counter() - started
        errors = LevelErrors.concat(parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, maps=errors.maps, latent=errors.latent, seconds=spent)
        if seconds is not None:
            seconds[(split, level, steps, draws)] = spent
        return errors

    def level_errors(self, split: str, levels, steps: int, draws: int) -> LevelErrors:
        parts = [self.errors(split, t, steps, 1 if t == 0 else draws) for t in levels]
        return LevelErrors(np.concatenate([p.maps for p in parts], axis=1), np.concatenate([p.latent for p in parts], axis=1))

    def diffusion(self, levels=DEFAULT_LEVELS, steps=DEFAULT_STEPS, draws=DEFAULT_DRAWS, **options):
        """The diffusion score's Scores on the pool, from cached errors."""
        scorer = DiffusionScore(self.codec, self.denoiser, levels=levels, steps=steps, draws=draws, seed=SEED, **options)
        scorer.set_density_reference(self.train_batch.latents, self.train_batch.ids)
        scorer.fit_errors(self.level_errors("reference", scorer.levels, steps, draws), self.reference.latents, self.reference.ids)
        return scorer.score_errors(self.level_errors("test", scorer.levels, steps, draws), self.test.latents, self.test.ids)

    def baseline(self, name: str):
        method = build_method(name, self.codec, None, {"seed": SEED})
        started = time.perf_counter()
        result = method.fit(self.train_batch).score(self.test)
        return result, time.perf_counter() - started


def metrics(pool: Pool, result) -> dict[str, dict]:
    return {case.name: {"protocol": case.protocol, **case_metrics(case, result)} for case in pool.cases}


def protocol_means(per_case: dict[str, dict], metric: str = "auroc") -> dict[str, float]:
    groups: dict[str, list[float]] = {}
    for row in per_case.values():
        if metric in row:
            groups.setdefault(row["protocol"], []).append(row[metric])
    return {p: float(np.mean(v)) for p, v in groups.items()}


def tasks(names) -> list[Task]:
    known = {t.name: t for t in (digits_task((0, 1)), digits_task((2, 3)), photos_task())}
    return [known[n] for n in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["digits-holdout-01", "digits-holdout-23", "photos-32px-holdout5-seed0"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    sizes = dict(reference_size=64, max_normal=60, max_per_class=30) if args.quick else dict(reference_size=512, max_normal=300, max_per_class=120)
    for task in tasks(args.tasks):
        prepared = Prepared(task, **sizes)
        out = metrics(prepared.pool, prepared.diffusion())
        print(task.name, "diffusion", protocol_means(out), protocol_means(out, "pixel_auroc"), flush=True)
        for name in BASELINES:
            result, _ = prepared.baseline(name)
            out = metrics(prepared.pool, result)
            print(task.name, name, protocol_means(out), protocol_means(out, "pixel_auroc"), flush=True)


if __name__ == "__main__":
    main()

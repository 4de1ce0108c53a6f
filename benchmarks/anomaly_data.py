"""Benchmark data for the anomaly scores (issue 6): splits, and models trained on the normal split only.

Each *task* is one image set with a fixed split into

* ``train``: normal images the model is trained on (``latentscope.train``) and
  the baselines are fitted on; the scorer's per-level statistics come from
  them too,
* ``test_normal``: normal images no model has seen,
* ``anomalies``: one array per held-out class (semantic protocol).

The defects protocol pastes synthetic defects into copies of ``test_normal``.

``digits-holdout-AB``: scikit-learn's digits without the classes A and B; each
of A and B is evaluated on its own against the other eight classes (five models
cover all ten digits, half the training cost of one model per digit).
``photos``: photo patches (``benchmarks/colour_sets.py``) without five source
pictures chosen by seed; each held-out source is evaluated on its own.
``icons``: Papirus app icons; the anomalies are icons of other kinds from the
same theme (folders of ``places``, ``devices``, documents of ``mimetypes``),
each evaluated on its own: same style and palette, another kind of object.

Models are cached under ``benchmarks/data/anomaly/`` (gitignored) and reused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.colour_sets import DATA_DIR, load_icon_context, load_set
from latentscope.datasets import digits_array

log = logging.getLogger(__name__)

MODEL_DIR = DATA_DIR / "anomaly"
TEST_FRACTION = 0.2
DIGIT_PAIRS = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))
PHOTO_HOLDOUTS = 5
ICON_CONTEXTS = ("places", "devices", "mimetypes")
# the shipped demo model's recipe (short runs: ~10k images seen by the autoencoder)
DIGITS_TRAINING = dict(epochs=8, denoiser_epochs=12, seed=0)
PHOTOS_TRAINING = dict(epochs=10, denoiser_epochs=16, seed=0)
# larger colour images: the automatic plan a user gets (10-minute autoencoder budget, coarse to fine)
PLANNED_TRAINING = dict(seed=0)
TASK_SIZES = (32, 64)


def colour_training(size: int) -> dict:
    return dict(PHOTOS_TRAINING if size == 32 else PLANNED_TRAINING)


@dataclass
class Task:
    """One trained model and its evaluation data."""

    name: str
    dataset: str  # "digits" or a colour set name
    train: np.ndarray  # uint8 N x H x W x 3
    test_normal: np.ndarray
    anomalies: dict[str, np.ndarray] = field(default_factory=dict)
    training: dict = field(default_factory=dict)

    @property
    def model(self) -> Path:
        return MODEL_DIR / self.name

    def ensure_model(self, progress: bool = False) -> Path:
        """Train on ``train`` once; later calls reuse the cached model folder."""
        from latentscope.training import train

        if not (self.model / "training.json").exists():
            log.info("training %s on %d images", self.name, len(self.train))
            command = f"benchmarks/anomaly_data.py: latentscope.train(<{self.name} train split>, {self.model}, **{self.training})"
            train(self.train, self.model, progress=progress, command=command, name=self.name, **self.training)
        return self.model


def _split_normals(normal_idx: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(normal_idx)
    n_test = int(round(TEST_FRACTION * len(order)))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def digits_task(pair: tuple[int, int], seed: int = 0, size: int = 32) -> Task:
    images, labels = digits_array(size)
    normal = np.flatnonzero(~np.isin(labels, pair))
    train_idx, test_idx = _split_normals(normal, seed)
    anomalies = {f"digit {c}": images[labels == c] for c in pair}
    suffix = "" if size == 32 else f"-{size}px"
    return Task(f"digits-holdout-{pair[0]}{pair[1]}{suffix}", "digits", images[train_idx], images[test_idx], anomalies,
                dict(DIGITS_TRAINING))


def photos_name(size: int = 32, seed: int = 0) -> str:
    return f"photos-{size}px-holdout{PHOTO_HOLDOUTS}-seed{seed}"


def icons_name(size: int = 32, seed: int = 0) -> str:
    return f"icons-{size}px-seed{seed}"


def photos_task(seed: int = 0, size: int = 32, count: int = 2000) -> Task:
    images, groups = load_set("photos", size, count)
    sources = np.unique(groups)
    held = sorted(np.random.default_rng(seed).choice(sources, PHOTO_HOLDOUTS, replace=False))
    normal = np.flatnonzero(~np.isin(groups, held))
    train_idx, test_idx = _split_normals(normal, seed)
    anomalies = {f"source {name}": images[groups == name] for name in held}
    return Task(photos_name(size, seed), f"photos {size}px", images[train_idx],
                images[test_idx], anomalies, colour_training(size))


def icons_task(seed: int = 0, size: int = 32, count: int = 2000) -> Task:
    images, _ = load_set("icons", size, count)
    train_idx, test_idx = _split_normals(np.arange(len(images)), seed)
    anomalies = {f"{context} icons": load_icon_context(context, size, seed=seed) for context in ICON_CONTEXTS}
    return Task(icons_name(size, seed), f"icons {size}px", images[train_idx], images[test_idx], anomalies,
                colour_training(size))


def all_tasks() -> list[Task]:
    return [digits_task(DIGIT_PAIRS[0]), *(make(size=s) for s in TASK_SIZES for make in (photos_task, icons_task)),
            *(digits_task(p) for p in DIGIT_PAIRS[1:])]


if __name__ == "__main__":
    import argparse

    logging.basicConfig(level=logging.INFO)
    parser = argparse.ArgumentParser(description="Train (and cache) the benchmark models.")
    parser.add_argument("--only", nargs="*", help="task names to train (default: all)")
    args = parser.parse_args()
    for task in all_tasks():
        if args.only and task.name not in args.only:
            continue
        print(task.name, len(task.train), len(task.test_normal), {k: len(v) for k, v in task.anomalies.items()}, flush=True)
        task.ensure_model()
        print("done", task.model, flush=True)

"""Alternative ways to combine the default diffusion score's terms, from bench_anomaly's cached models and errors.

    python benchmarks/anomaly_combinations.py [TASK ...]

The default score is the largest of the terms' tail surprises (``surprise:local``, ``surprise:content``,
``surprise:gist`` in its parts). This prints semantic / defects image AUROC of other combinations of the same
surprises, per task, so a change of the combination can be judged on every task at once, and checks that the
terms are calibrated on unseen normal images (the reference images are training images the model has seen): the
share of the normal test images beyond each term's 90th and 99th reference percentiles (0.10 and 0.01 if so), and
how much a perfect calibration would gain: every term's surprise recomputed against half of the unseen normal test
images (an oracle no user has), both scores measured on the other half.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_anomaly import Prepared, metrics, protocol_means, tasks  # noqa: E402
from latentscope.anomaly.base import Scores  # noqa: E402
from latentscope.anomaly.diffusion import DEFAULT_TERMS, SURPRISE_PREFIX, tail_surprise  # noqa: E402
from latentscope.anomaly.metrics import auroc  # noqa: E402

TASKS = ["digits-holdout-01", "digits-holdout-23", "photos-32px-holdout5-seed0", "icons-32px-seed0",
         "photos-64px-holdout5-seed0", "icons-64px-seed0"]


def combinations(surprise: np.ndarray) -> dict[str, np.ndarray]:
    """N x terms surprises (the first column ``local``) -> candidate image scores."""
    largest = surprise.max(axis=1)
    return {
        "largest (default)": largest,
        "sum (Fisher)": surprise.sum(axis=1),
        "log-sum-exp": np.logaddexp.reduce(surprise, axis=1),
        "two largest": np.sort(surprise, axis=1)[:, -2:].sum(axis=1),
        "largest + half the rest": largest + 0.5 * (surprise.sum(axis=1) - largest),
        "local with the larger of the others (log-sum-exp)": np.logaddexp(surprise[:, 0], surprise[:, 1:].max(axis=1)),
        "local or the mean of the others": np.maximum(surprise[:, 0], surprise[:, 1:].mean(axis=1)),
        "local or the smaller of the others": np.maximum(surprise[:, 0], surprise[:, 1:].min(axis=1)),
    }


def oracle_calibration(prepared: Prepared, result) -> dict[str, str]:
    """Semantic / defects AUROC of the default score against the same maximum of surprises calibrated on half of the
    unseen normal test images, both on the other half (and every anomalous image)."""
    normal = np.random.default_rng(0).permutation(prepared.pool.cases[0].normal)
    calibration, kept = normal[: len(normal) // 2], normal[len(normal) // 2:]
    default = result.scores
    oracle = np.max([tail_surprise(result.parts[term], result.parts[term][calibration]) for term in DEFAULT_TERMS], axis=0)
    per_protocol: dict[str, list] = {}
    for case in prepared.pool.cases:
        rows = np.r_[kept, case.anomalous]
        labels = np.r_[np.zeros(len(kept)), np.ones(len(case.anomalous))]
        per_protocol.setdefault(case.protocol, []).append([auroc(labels, default[rows]), auroc(labels, oracle[rows])])
    return {protocol: "{:.3f} -> {:.3f}".format(*np.mean(values, axis=0)) for protocol, values in per_protocol.items()}


def main() -> None:
    torch.set_num_threads(2)
    for task in tasks(sys.argv[1:] or TASKS):
        prepared = Prepared(task, reference_size=512, max_normal=300, max_per_class=120)  # bench_anomaly's sizes
        result = prepared.diffusion()
        surprise = np.stack([result.parts[SURPRISE_PREFIX + term] for term in DEFAULT_TERMS], axis=1)
        row = {}
        for name, scores in combinations(surprise).items():
            means = protocol_means(metrics(prepared.pool, Scores(scores, result.maps)))
            row[name] = f"{means['semantic']:.3f} / {means['defects']:.3f}"
        print(task.name, json.dumps(row), flush=True)
        normal = prepared.pool.cases[0].normal
        beyond = {term: f"{np.mean(surprise[normal, i] > np.log(10)):.2f} / {np.mean(surprise[normal, i] > np.log(100)):.3f}"
                  for i, term in enumerate(DEFAULT_TERMS)}
        print(task.name, "normal test images beyond the 90th / 99th reference percentile:", json.dumps(beyond), flush=True)
        print(task.name, "calibrated on training images -> on unseen normal images (oracle):",
              json.dumps(oracle_calibration(prepared, result)), flush=True)


if __name__ == "__main__":
    main()

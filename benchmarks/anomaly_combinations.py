"""Alternative ways to combine the default diffusion score's terms, from bench_anomaly's cached models and errors.

    python benchmarks/anomaly_combinations.py [TASK ...]

The default score is the largest of the terms' tail surprises (``surprise:local``, ``surprise:content``,
``surprise:gist`` in its parts). This prints semantic / defects image AUROC of other combinations of the same
surprises, per task, so a change of the combination can be judged on every task at once, and checks that the
terms are calibrated on unseen normal images (the reference images are training images the model has seen): the
share of the normal test images beyond each term's 90th and 99th reference percentiles (0.10 and 0.01 if so), and
how much a perfect calibration would gain: every term's surprise recomputed against half of the unseen normal test
images (an oracle no user has), both scores measured on the other half. Last, it compares the exponential tail of
the surprises with a generalised Pareto tail fitted to each term's reference values, on the clean reference and on
one contaminated as a self-calibrated scope would be (5 % of the reference replaced by half of the protocol's
anomalies, scored on the other half).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import genpareto

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_anomaly import Prepared, metrics, protocol_means, tasks  # noqa: E402
from latentscope.anomaly.base import Scores  # noqa: E402
from latentscope.anomaly.diffusion import DEFAULT_TERMS, SURPRISE_PREFIX, TAIL_QUANTILE, tail_surprise  # noqa: E402
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


def pareto_tail_surprise(values: np.ndarray, reference: np.ndarray, quantile: float = TAIL_QUANTILE) -> np.ndarray:
    """``tail_surprise`` with a generalised Pareto tail: shape and scale fitted to the reference's excesses over its
    ``quantile`` by maximum likelihood (an exponential with their mean excess where the fitted shape is negative)."""
    reference = np.sort(np.asarray(reference, dtype=np.float64))
    values = np.asarray(values, dtype=np.float64)
    threshold = float(np.quantile(reference, quantile))
    excess = reference[reference > threshold] - threshold
    shape, _, scale = genpareto.fit(excess, floc=0)
    if shape <= 1e-6:
        shape, scale = 0.0, float(excess.mean())
    beyond = np.maximum(values - threshold, 0.0)
    grown = np.log1p(shape * beyond / scale) / shape if shape else beyond / scale
    below = 1.0 - np.searchsorted(reference, values, side="left") / (len(reference) + 1.0)
    return np.where(values > threshold, -np.log(1.0 - quantile) + grown, -np.log(np.maximum(below, 1.0 - quantile)))


def tail_models(prepared: Prepared, result, reference: dict[str, np.ndarray], contamination: float = 0.05) -> dict:
    """Semantic / defects AUROC of the largest surprise under each tail model, with the clean reference and with
    ``contamination`` of it replaced by half of each protocol's anomalies (scored on the other half); and the
    largest surprise of any unseen normal test image per term (calibrated tails keep it near ``log(count)``)."""
    normal = prepared.pool.cases[0].normal
    size = len(reference[DEFAULT_TERMS[0]])
    out = {}
    for model, surprise in (("exponential", tail_surprise), ("Pareto", pareto_tail_surprise)):
        row = {"largest surprise of a normal image": {
            term: round(float(surprise(result.parts[term][normal], reference[term]).max()), 1) for term in DEFAULT_TERMS}}
        for share in (0.0, contamination):
            means = {}
            for protocol in dict.fromkeys(case.protocol for case in prepared.pool.cases):
                cases = [case for case in prepared.pool.cases if case.protocol == protocol]
                anomalous = np.random.default_rng(0).permutation(np.unique(np.concatenate([c.anomalous for c in cases])))
                injected = anomalous[: len(anomalous) // 2][: int(round(share * size))]
                keep_rows = np.random.default_rng(1).permutation(size)[len(injected):]
                scores = np.max([surprise(result.parts[term], np.r_[reference[term][keep_rows], result.parts[term][injected]])
                                 for term in DEFAULT_TERMS], axis=0)
                values = []
                for case in cases:
                    kept = np.setdiff1d(case.anomalous, injected)
                    labels = np.r_[np.zeros(len(case.normal)), np.ones(len(kept))]
                    values.append(auroc(labels, scores[np.r_[case.normal, kept]]))
                means[protocol] = float(np.mean(values))
            row[f"{share:.0%} contaminated"] = "{semantic:.3f} / {defects:.3f}".format(**means)
        out[model] = row
    return out


def main() -> None:
    torch.set_num_threads(2)
    for task in tasks(sys.argv[1:] or TASKS):
        prepared = Prepared(task, reference_size=512, max_normal=300, max_per_class=120)  # bench_anomaly's sizes
        scorer = prepared.fitted_diffusion()
        result = scorer.score_errors(prepared.level_errors("test", scorer.levels, scorer.steps, scorer.draws),
                                     prepared.test.latents, prepared.test.ids)
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
        print(task.name, "tail models:", json.dumps(tail_models(prepared, result, scorer.term_reference_)), flush=True)


if __name__ == "__main__":
    main()

"""Detection metrics: image AUROC, AUPR (average precision), F1-max, and pixel AUROC over defect masks.

Labels are 1 for anomalous, 0 for normal; higher scores mean more anomalous.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError


def _check(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise InputError(f"{labels.size} labels but {scores.size} scores")
    if labels.all() or not labels.any():
        raise InputError("labels must contain both normal (0) and anomalous (1) examples")
    if not np.isfinite(scores).all():
        raise InputError(f"{int((~np.isfinite(scores)).sum())} scores are not finite")
    return labels, scores


def auroc(labels, scores) -> float:
    """Area under the ROC curve (ties count one half), via the Mann-Whitney rank sum."""
    from scipy.stats import rankdata

    labels, scores = _check(labels, scores)
    ranks = rankdata(scores)
    positives = int(labels.sum())
    negatives = labels.size - positives
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def aupr(labels, scores) -> float:
    """Average precision (area under the precision-recall curve, step-wise as in scikit-learn)."""
    from sklearn.metrics import average_precision_score

    labels, scores = _check(labels, scores)
    return float(average_precision_score(labels, scores))


def f1_max(labels, scores) -> float:
    """The best F1 over all thresholds."""
    from sklearn.metrics import precision_recall_curve

    labels, scores = _check(labels, scores)
    precision, recall, _ = precision_recall_curve(labels, scores)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    return float(f1.max())


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    """AUROC over every pixel of every image (normal images contribute all-zero masks).

    ``masks`` N x H x W (bool), ``maps`` N x h x w; maps of another size are resized to the masks' size first.
    """
    masks = np.asarray(masks).astype(bool)
    maps = np.asarray(maps, dtype=np.float32)
    if maps.shape[0] != masks.shape[0]:
        raise InputError(f"{maps.shape[0]} maps but {masks.shape[0]} masks")
    if maps.shape[1:] != masks.shape[1:]:
        from .maps import resize_maps

        maps = resize_maps(maps, masks.shape[1:])
    return auroc(masks.ravel(), maps.ravel())


def image_metrics(labels, scores) -> dict[str, float]:
    """AUROC, AUPR and F1-max of one score."""
    return {"auroc": auroc(labels, scores), "aupr": aupr(labels, scores), "f1_max": f1_max(labels, scores)}

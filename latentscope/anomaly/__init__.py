"""Anomaly scores from diffusion reconstruction error, with heatmaps, baselines and an evaluation harness.

* :func:`score` scores a scope (``latentscope score``) and stores ``scores/<name>.parquet`` with heatmaps;
* :class:`Heatmaps` / :func:`heatmap_png` draw one image's heatmap overlay; :func:`heatmap_renderer` gives the
  dashboard its ``image id -> PNG`` function;
* :class:`DiffusionScore` and the baselines in :mod:`.baselines` work on in-memory :class:`Batch` es;
* :func:`evaluate` measures every method on the *semantic* and *defects* protocols (``latentscope eval-anomaly``).
"""

from .base import Batch, Method, Scores
from .baselines import BASELINES, IsolationForestLatent, KNNLatent, KNNPixel, PCAPixel, RoundTrip
from .defects import KINDS as DEFECT_KINDS
from .defects import paste_defects
from .diffusion import DEFAULT_DRAWS, DEFAULT_LEVELS, DEFAULT_STEPS, DiffusionScore
from .evaluate import DEFAULT_METHODS, Pool, Report, defect_case, evaluate, semantic_cases
from .heatmaps import Heatmaps, export_heatmaps, export_top, heatmap_png, heatmap_renderer
from .metrics import aupr, auroc, f1_max, image_metrics, pixel_auroc
from .stage import ScoreSummary, score, score_is_current, top_scores

__all__ = [
    "Batch", "Method", "Scores", "BASELINES", "IsolationForestLatent", "KNNLatent", "KNNPixel", "PCAPixel", "RoundTrip",
    "DEFECT_KINDS", "paste_defects", "DEFAULT_DRAWS", "DEFAULT_LEVELS", "DEFAULT_STEPS", "DiffusionScore",
    "DEFAULT_METHODS", "Pool", "Report", "defect_case", "evaluate", "semantic_cases", "Heatmaps", "export_heatmaps", "export_top",
    "heatmap_png", "heatmap_renderer", "aupr", "auroc", "f1_max", "image_metrics", "pixel_auroc", "ScoreSummary", "score", "score_is_current", "top_scores",
]

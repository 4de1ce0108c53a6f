"""Where along a path the frames go: equal steps in the path parameter, or equal image change.

A path is a chain of segments (one per pair of consecutive knots: the ends and
via points). Frames are shared out between segments in proportion to each
segment's length, every segment getting at least one step, and every knot is a
frame. Within a segment, ``uniform`` spacing takes equal steps of the segment's
parameter; ``even`` spacing takes equal steps of *image* change, measured by
decoding a dense sample of the path and inverting its cumulative arc length.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError


def share_out(lengths, total: int) -> list[int]:
    """Split ``total`` steps between segments in proportion to ``lengths`` (largest remainder, at least 1 each)."""
    lengths = np.asarray(lengths, np.float64)
    count = len(lengths)
    if total < count:
        raise InputError(f"{total} steps cannot pass through {count + 1} points; use at least {count} steps between them")
    weights = np.where(np.isfinite(lengths) & (lengths > 0), lengths, 0.0)
    if weights.sum() == 0:
        weights = np.ones(count)
    spare = total - count
    exact = weights / weights.sum() * spare
    counts = np.floor(exact).astype(int)
    leftover = spare - counts.sum()
    counts[np.argsort(-(exact - counts), kind="stable")[:leftover]] += 1
    return [int(c) + 1 for c in counts]


def uniform_positions(steps: int) -> np.ndarray:
    """``steps`` positions 0, 1/steps, ..., (steps-1)/steps (the segment's far end belongs to the next)."""
    return np.arange(steps, dtype=np.float64) / steps


def equal_arc_positions(dense_u: np.ndarray, step_lengths: np.ndarray, steps: int) -> np.ndarray:
    """Positions that split the measured arc into ``steps`` equal pieces.

    ``dense_u`` (M + 1 increasing positions) were sampled and ``step_lengths``
    (M) is the image distance between consecutive samples.
    """
    arc = np.concatenate([[0.0], np.cumsum(np.maximum(step_lengths, 0.0))])
    if arc[-1] <= 0.0:
        return uniform_positions(steps)
    targets = np.arange(steps, dtype=np.float64) / steps * arc[-1]
    # np.interp needs increasing x; flat stretches of the arc repeat x, so nudge them apart
    arc = arc + np.arange(len(arc)) * (arc[-1] * 1e-12)
    return np.interp(targets, arc, dense_u)


def dense_samples(lengths, total: int, minimum: int = 8) -> list[int]:
    """Dense sample counts per segment for measuring image arc length."""
    return [max(minimum, c) for c in share_out(lengths, max(total, len(lengths)))]

"""Interpolants between two latents, vectorised over the positions ``u`` in [0, 1].

Latents are arrays of any shape (C x h x w for one image); the result has shape
``len(u) x *latent.shape``. Arithmetic is done in float64 and returned as float32.
"""

from __future__ import annotations

import numpy as np

PARALLEL_COSINE = 0.9995  # beyond this slerp is numerically a lerp (and antiparallel slerp has no unique arc)


def as_positions(u) -> np.ndarray:
    return np.atleast_1d(np.asarray(u, dtype=np.float64))


def lerp(a: np.ndarray, b: np.ndarray, u) -> np.ndarray:
    """Straight line ``(1 - u) a + u b``."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    u = as_positions(u).reshape(-1, *([1] * a64.ndim))
    return ((1.0 - u) * a64 + u * b64).astype(np.float32)


def angle_between(a: np.ndarray, b: np.ndarray) -> float:
    """Angle (radians) between two latents seen as flat vectors; 0 when either is zero."""
    a64, b64 = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    norms = np.linalg.norm(a64) * np.linalg.norm(b64)
    if norms == 0.0:
        return 0.0
    return float(np.arccos(np.clip(a64 @ b64 / norms, -1.0, 1.0)))


def slerp(a: np.ndarray, b: np.ndarray, u, parallel_cosine: float = PARALLEL_COSINE) -> np.ndarray:
    """Spherical interpolation along the great circle from ``a`` to ``b``.

    For endpoints of equal norm every frame keeps that norm (the typical-set shell
    of Gaussian-like latents, where a straight line would cut inside it). Falls
    back to :func:`lerp` when the latents are nearly parallel or antiparallel.
    """
    theta = angle_between(a, b)
    if abs(np.cos(theta)) > parallel_cosine:
        return lerp(a, b, u)
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    u = as_positions(u).reshape(-1, *([1] * a64.ndim))
    sin_theta = np.sin(theta)
    weight_a = np.sin((1.0 - u) * theta) / sin_theta
    weight_b = np.sin(u * theta) / sin_theta
    return (weight_a * a64 + weight_b * b64).astype(np.float32)


INTERPOLANTS = {"lerp": lerp, "slerp": slerp}


def polyline(points: np.ndarray, u, inner=lerp) -> np.ndarray:
    """Positions ``u`` along the polyline through ``points`` (K x ...), by cumulative straight-line length.

    ``u = 0`` is the first point and ``u = 1`` the last; each consecutive pair is
    joined with ``inner`` (lerp or slerp).
    """
    points = np.asarray(points, np.float32)
    u = np.clip(as_positions(u), 0.0, 1.0)
    knots = polyline_knots(points)
    piece = np.clip(np.searchsorted(knots, u, side="right") - 1, 0, len(points) - 2)
    width = knots[piece + 1] - knots[piece]
    local = np.where(width > 0, (u - knots[piece]) / np.where(width > 0, width, 1.0), 0.0)
    out = np.empty((len(u), *points.shape[1:]), np.float32)
    for index in np.unique(piece):
        chosen = piece == index
        out[chosen] = inner(points[index], points[index + 1], local[chosen])
    return out


def polyline_knots(points: np.ndarray) -> np.ndarray:
    """Fraction of the way along the polyline at which each point sits (first 0, last 1)."""
    steps = np.linalg.norm(np.diff(points.reshape(len(points), -1).astype(np.float64), axis=0), axis=1)
    total = steps.sum()
    if total == 0.0:
        return np.linspace(0.0, 1.0, len(points))
    return np.concatenate([[0.0], np.cumsum(steps) / total])

"""The map: UMAP projection of latents (PCA first when wide), new points onto it, points back off it.

* :class:`LatentProjection`: scikit-learn style ``fit`` / ``transform`` / ``inverse_transform`` / ``kneighbors``.
* :func:`project`: make and store a map of a scope (``latentscope project``); :func:`load_projection` reloads it.
* :func:`map_quality`: trustworthiness and kNN label agreement.
* :mod:`.jit`: the persistent numba cache that spares repeat runs umap-learn's compile time.
"""

from .index import NeighbourIndex
from .model import LatentProjection
from .quality import map_quality
from .store import ProjectSummary, load_projection, map_is_current, nearest_images, place_new, project

__all__ = ["LatentProjection", "NeighbourIndex", "ProjectSummary", "load_projection", "map_is_current", "map_quality", "nearest_images",
           "place_new", "project"]

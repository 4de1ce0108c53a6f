"""The Ray engine for ``score`` gives the local engine's scores and heatmaps (issue 9)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from latentscope.anomaly import score
from latentscope.errors import InputError
from latentscope.scope import Scope

from test_anomaly import FAST, MODEL, paste_defects, unseen_digits

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def small_scope(tmp_path_factory):
    """24 unseen digits, the first 3 with a blob, and one image file that went missing after encoding."""
    import latentscope

    images, _ = unseen_digits()
    pixels = images[100:124].copy()
    pixels[:3] = paste_defects(pixels[:3], ("blob",), seed=3).images
    out = tmp_path_factory.mktemp("ray-score") / "digits.scope"
    latentscope.encode(pixels, MODEL, out, progress=False)
    Scope(out).image_path(23).unlink()
    return out


@pytest.mark.slow
def test_ray_diffusion_scores_equal_the_local_ones(small_scope, ray_cluster):
    options = dict(reference_size=12, batch_size=5, progress=False, top=3, device="cpu", **FAST)
    local = score(small_scope, name="local", **options)
    remote = score(small_scope, name="ray", engine="ray", **options)
    scope = Scope(small_scope)
    pd.testing.assert_frame_equal(scope.read_scores("ray"), scope.read_scores("local"), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.load(small_scope / "scores" / "ray.maps.npy").astype(np.float32),
                               np.load(small_scope / "scores" / "local.maps.npy").astype(np.float32), rtol=1e-3, atol=1e-3)
    assert remote.skipped == local.skipped and 23 in remote.skipped
    assert set(remote.top["id"]) == set(local.top["id"])
    assert scope.meta["scores"]["ray"]["engine"].startswith("ray: 2 model actors (cpu)")
    assert scope.meta["scores"]["local"]["engine"] == "local"


def test_ray_roundtrip_and_methods_without_a_model(small_scope, ray_cluster):
    options = dict(method="roundtrip", batch_size=6, progress=False, top=0, device="cpu")
    score(small_scope, name="rt-local", **options)
    score(small_scope, name="rt-ray", engine="ray", ray_actors=1, **options)
    scope = Scope(small_scope)
    pd.testing.assert_frame_equal(scope.read_scores("rt-ray"), scope.read_scores("rt-local"), rtol=1e-4, atol=1e-5)
    with pytest.raises(InputError, match="runs no model"):
        score(small_scope, name="knn", method="knn-latent", engine="ray", progress=False)

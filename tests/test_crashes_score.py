"""Crash at any moment, for ``latentscope score`` (see test_crashes.py and reliability.py for the method).

``score`` is killed with SIGKILL at ten seeded moments (times after start-up and commit boundaries),
rerun after each kill, then run to the end: its scores, heatmaps, calibration and scope.json entry must equal
those of an uninterrupted run, with no duplicate rows and no half-written file.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("latentscope.anomaly")

from latentscope.scope import Scope  # noqa: E402

from reliability import crash_sequence, leftovers, run_child  # noqa: E402

MODEL = "builtin:digits"  # the shipped model has a denoiser: the real diffusion scorer, no training here
SCORE = textwrap.dedent(
    """
    import sys
    from latentscope.anomaly import score
    reliability.ready()
    score(sys.argv[1], name="crash", reference_size=12, batch_size=4, checkpoint_seconds=0.0, levels=(0.0, 0.1),
          steps=2, draws=2, top=0, device="cpu", progress=False)
    """
)
VOLATILE = ("time", "seconds", "versions")


@pytest.fixture(scope="module")
def digits_scope(tmp_path_factory) -> Path:
    from latentscope.datasets import digits_array
    from latentscope.ingest import encode

    images, _ = digits_array(32)
    out = tmp_path_factory.mktemp("crash-score") / "digits.scope"
    encode(images[:36], MODEL, out, progress=False, device="cpu", thumbnails=False)
    return out


def score_files(scope_path: Path) -> dict:
    """Every file the score run left under scores/ (arrays by content) and its scope.json entry without timings."""
    files = {}
    for path in sorted((scope_path / "scores").iterdir()):
        if path.suffix == ".parquet":
            files[path.name] = pd.read_parquet(path)
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as loaded:
                files[path.name] = {k: np.array(loaded[k]) for k in loaded.files}
        elif path.suffix == ".npy":
            files[path.name] = np.load(path, allow_pickle=False)
        else:
            files[path.name] = path.read_bytes()
    entry = {k: v for k, v in Scope(scope_path).meta["scores"]["crash"].items() if k not in VOLATILE}
    return {"files": files, "entry": entry}


def _assert_equal(got, want, where=""):
    if isinstance(want, pd.DataFrame):
        pd.testing.assert_frame_equal(got, want, obj=where)
    elif isinstance(want, np.ndarray):
        np.testing.assert_array_equal(got, want, err_msg=where)
    elif isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for key in want:
            _assert_equal(got[key], want[key], f"{where}/{key}")
    else:
        assert got == want, where


@pytest.mark.slow
def test_score_survives_kill_9_at_random_points(tmp_path, digits_scope):
    reference, out = tmp_path / "reference", tmp_path / "scope"
    shutil.copytree(digits_scope, reference)
    first = run_child(SCORE, [reference], tmp_path / "run")
    assert first.returncode == 0, first.stderr[-2000:]
    want = score_files(reference)

    def check():
        got = score_files(out)
        _assert_equal(got, want)
        table = got["files"]["crash.parquet"]
        assert not table["id"].duplicated().any() and set(table["id"]) == set(Scope(out).ok_manifest()["id"])
        assert not leftovers(out) and not (out / ".partial" / "score" / "crash").exists()

    def start_over():
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(digits_scope, out)

    start_over()
    log = crash_sequence("score", SCORE, [out], tmp_path / "run", seed=5, duration=first.work_seconds,
                         replaces=first.replaces, check=check, start_over=start_over)
    assert log.landed >= 10

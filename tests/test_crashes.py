"""Crash at any moment: kill -9 at seeded random points, rerun, and the result equals an uninterrupted run.

Each command runs in a child process (see ``reliability.py``) that is killed
at ten seeded random moments, times after its imports or commit boundaries
(right before or after a random ``os.replace``), rerun after each kill, and
finally run to the end; every run that finishes must leave files equal to those
of an uninterrupted run, with no duplicate rows and no half-written file.

Also a full disk: a write that fails with ENOSPC leaves the scope exactly as it was.
"""

from __future__ import annotations

import errno
import os
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from latentscope.errors import StorageError
from latentscope.ingest import encode
from latentscope.scope import Scope

from conftest import make_image_folder
from reliability import crash_before_each_replace, crash_sequence, leftovers, note, run_child

ENCODE = textwrap.dedent(
    """
    import sys
    from latentscope.ingest import encode
    reliability.ready()
    encode(sys.argv[1], sys.argv[2], sys.argv[3], batch_size=4, checkpoint_images=8, checkpoint_seconds=0.2,
           progress=False, device="cpu", workers=1)
    """
)
COLUMNS = ["id", "path", "sha256", "width", "height", "status", "error", "row"]


@pytest.mark.slow
def test_encode_survives_kill_9_at_random_points(tmp_path, kl_folder):
    images = make_image_folder(tmp_path / "images", 120)
    reference, out = tmp_path / "reference", tmp_path / "scope"
    first = run_child(ENCODE, [images, kl_folder, out], tmp_path / "run")  # the same path: scope.json records it
    assert first.returncode == 0, first.stderr[-2000:]
    out.rename(reference)

    def check():
        got, want = Scope(out), Scope(reference)
        pd.testing.assert_frame_equal(got.manifest()[COLUMNS], want.manifest()[COLUMNS])
        assert not got.manifest()["id"].duplicated().any() and not got.manifest()["path"].duplicated().any()
        np.testing.assert_array_equal(got.latents(), want.latents())
        assert not leftovers(out) and not (out / ".partial" / "encode").exists()

    log = crash_sequence("encode", ENCODE, [images, kl_folder, out], tmp_path / "run", seed=2,
                         duration=first.work_seconds, replaces=first.replaces, check=check,
                         start_over=lambda: shutil.rmtree(out))
    assert log.landed >= 10


def test_full_disk_during_commit_leaves_scope_as_it_was(tmp_path, kl_folder, monkeypatch):
    images = make_image_folder(tmp_path / "images", 6)
    out = tmp_path / "scope"
    encode(images, kl_folder, out, progress=False, device="cpu")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    make_image_folder(tmp_path / "images", 9, seed=4, classes=("new",))

    import latentscope.fileio as fileio

    real_replace = fileio.os.replace

    def full_disk(src, dst):
        if str(dst).endswith(("images.parquet.next", "latents.npy.next")):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "replace", full_disk)
    with pytest.raises(StorageError, match="disk is full"):
        encode(images, kl_folder, out, progress=False, device="cpu")
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before
    assert not list(out.rglob("*.tmp"))
    summary = encode(images, kl_folder, out, progress=False, device="cpu")  # resumes from the checkpoints
    assert summary.encoded == 9 and len(Scope(out).latents()) == 15
    note("full-disk", command="encode", survived=True)


def test_written_files_get_the_umask_mode_and_replaced_files_keep_theirs(tmp_path, kl_folder):
    from latentscope.fileio import write_bytes

    old = os.umask(0o022)
    try:
        out = tmp_path / "scope"
        encode(make_image_folder(tmp_path / "images", 4), kl_folder, out, progress=False, device="cpu")
        modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir() if p.is_file() and p.name != ".lock"}
        assert modes and set(modes.values()) == {0o644}, modes  # readable by the team sharing the scope
        shared = tmp_path / "morph.json"
        write_bytes(shared, b"1")
        shared.chmod(0o640)
        write_bytes(shared, b"2")
        assert shared.stat().st_mode & 0o777 == 0o640 and shared.read_bytes() == b"2"
    finally:
        os.umask(old)


# ---------------------------------------------------------------------- project

PROJECT = textwrap.dedent(
    """
    import sys
    from latentscope.projection import project
    from latentscope.projection.jit import load_umap
    load_umap()
    reliability.ready()
    project(sys.argv[1], "default", seed=int(sys.argv[2]), progress=False)
    """
)
VOLATILE = ("time", "seconds", "versions")  # provenance that differs between any two runs


@pytest.fixture(scope="module")
def small_scope(tmp_path_factory, kl_folder) -> Path:
    root = tmp_path_factory.mktemp("crash-project")
    encode(make_image_folder(root / "images", 150), kl_folder, root / "scope", progress=False, device="cpu", thumbnails=False)
    return root / "scope"


def map_state(scope_path: Path, name: str = "default") -> tuple[pd.DataFrame, dict]:
    """The map's table and its scope.json entry without the run's timings."""
    scope = Scope(scope_path)
    entry = {k: v for k, v in scope.meta["maps"][name].items() if k not in VOLATILE}
    if entry.get("quality"):
        entry["quality"] = {k: v for k, v in entry["quality"].items() if k not in VOLATILE}
    return scope.read_map(name), entry


def assert_same_index(got: Path, want: Path) -> None:
    got_files = sorted(p.relative_to(got) for p in got.rglob("*.npy"))
    assert got_files == sorted(p.relative_to(want) for p in want.rglob("*.npy"))
    for rel in got_files:
        np.testing.assert_array_equal(np.load(got / rel, allow_pickle=False), np.load(want / rel, allow_pickle=False))


@pytest.mark.slow
def test_project_survives_kill_9_at_random_points(tmp_path, small_scope):
    from latentscope.projection import load_projection

    reference, out, warm = tmp_path / "reference", tmp_path / "scope", tmp_path / "warm"
    for folder in (reference, warm):
        shutil.copytree(small_scope, folder)
    # a first run on a fresh machine also compiles UMAP's numba functions into their on-disk cache, which takes
    # several times the work itself; timed, it would place most kills after the end of every later run
    assert run_child(PROJECT, [warm, 0], tmp_path / "run").returncode == 0
    first = run_child(PROJECT, [reference, 0], tmp_path / "run")
    assert first.returncode == 0, first.stderr[-2000:]

    def check():
        (got_map, got_entry), (want_map, want_entry) = map_state(out), map_state(reference)
        pd.testing.assert_frame_equal(got_map, want_map)
        assert got_entry == want_entry
        assert not got_map["id"].duplicated().any() and set(got_map["id"]) == set(Scope(out).ok_manifest()["id"])
        assert_same_index(out / "index", reference / "index")
        assert not leftovers(out)
        probe = np.asarray(Scope(out).latents()[:5], np.float32)
        np.testing.assert_array_equal(load_projection(out).transform(probe), load_projection(reference).transform(probe))

    def start_over():
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(small_scope, out)

    start_over()
    log = crash_sequence("project", PROJECT, [out, 0], tmp_path / "run", seed=3, duration=first.work_seconds,
                         replaces=first.replaces, check=check, start_over=start_over)
    assert log.landed >= 10


class MapState:
    """A map's table and entry, comparable with ==."""

    def __init__(self, scope_path: Path):
        self.frame, self.entry = map_state(scope_path)

    def __eq__(self, other) -> bool:
        return self.frame.equals(other.frame) and self.entry == other.entry


def test_project_over_an_old_map_leaves_old_or_new_never_a_mix(tmp_path, small_scope):
    """Crash before each commit boundary of a project run that replaces a map: the scope shows the old map with its
    old entry or the new map with its new entry."""
    from latentscope.projection import project

    old_scope, new_scope = tmp_path / "old", tmp_path / "new"
    shutil.copytree(small_scope, old_scope)
    project(old_scope, seed=0, progress=False, quality=False)
    shutil.copytree(old_scope, new_scope)
    project(new_scope, seed=1, progress=False, quality=False)
    old, new = MapState(old_scope), MapState(new_scope)
    assert old.entry["params"]["random_state"] == 0 and new.entry["params"]["random_state"] == 1
    boundaries = crash_before_each_replace(old_scope, tmp_path, lambda work: project(work, seed=1, progress=False, quality=False),
                                           MapState, old, new)
    assert boundaries >= 2
    note("crash-boundaries", command="project over an old map", boundaries=boundaries, mixed=0)


def test_side_files_commit_with_their_table(tmp_path, small_scope):
    """A score table with heatmaps and calibration beside it, replaced by another: after a crash at any boundary,
    all three files and the entry are the old ones or all the new ones."""
    ids = Scope(small_scope).ok_manifest()["id"]

    def write(scope_path: Path, seed: int) -> None:
        from latentscope.fileio import write_npy

        values = np.random.default_rng(seed).normal(size=(len(ids), 4, 4)).astype(np.float32)
        Scope(scope_path).write_scores("run", pd.DataFrame({"id": ids, "score": values.mean((1, 2))}), {"seed": seed},
                                       side={"run.maps.npy": lambda p: write_npy(p, values),
                                             "run.calibration.npy": lambda p: write_npy(p, values[:2])},
                                       files={"maps": "run.maps.npy", "calibration": "run.calibration.npy"})

    def state(scope_path: Path):
        scope = Scope(scope_path)
        files = tuple((p.name, p.read_bytes()) for p in sorted((scope_path / "scores").iterdir()))
        return files, scope.meta["scores"]["run"]["params"]

    old_scope, new_scope = tmp_path / "old", tmp_path / "new"
    shutil.copytree(small_scope, old_scope)
    write(old_scope, 1)
    shutil.copytree(old_scope, new_scope)
    write(new_scope, 2)
    boundaries = crash_before_each_replace(old_scope, tmp_path, lambda work: write(work, 2), state, state(old_scope),
                                           state(new_scope))
    assert boundaries >= 4
    note("crash-boundaries", command="scores with heatmaps and calibration", boundaries=boundaries, mixed=0)


# ---------------------------------------------------------------------- train

TRAIN = textwrap.dedent(
    """
    import sys
    from latentscope.training import train
    reliability.ready()
    train(sys.argv[1], sys.argv[2], size=16, width=8, epochs=3, denoiser_epochs=3, batch_size=4, learning_rate=3e-3,
          patience=0, checkpoint_seconds=0.2, progress=False, device="cpu")
    """
)


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in ("seconds", "train_seconds", "environment")}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def model_files(folder: Path) -> dict:
    """Weights, configs and the training record of a model folder, without the run's timings."""
    import json

    from safetensors.torch import load_file

    files = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.suffix == ".safetensors":
            files[rel] = {k: v.numpy() for k, v in load_file(str(path)).items()}
        elif path.suffix == ".json":
            files[rel] = _without_timings(json.loads(path.read_text()))
        elif path.is_file():
            files[rel] = "present"
    return files


@pytest.mark.slow
def test_train_survives_kill_9_at_random_points(tmp_path):
    images = make_image_folder(tmp_path / "images", 40)
    reference, out = tmp_path / "reference", tmp_path / "model"
    first = run_child(TRAIN, [images, out], tmp_path / "run")  # the same path: the model card records the command
    assert first.returncode == 0, first.stderr[-2000:]
    out.rename(reference)
    want = model_files(reference)
    assert "vae/diffusion_pytorch_model.safetensors" in want and "README.md" in want

    def check():
        got = model_files(out)
        assert got.keys() == want.keys()
        for name, value in want.items():
            if isinstance(value, dict) and name.endswith(".safetensors"):
                assert got[name].keys() == value.keys()
                for key in value:
                    np.testing.assert_array_equal(got[name][key], value[key], err_msg=f"{name}: {key}")
            else:
                assert got[name] == value, name
        assert not (out / "checkpoints").exists() and not leftovers(out)

    log = crash_sequence("train", TRAIN, [images, out], tmp_path / "run", seed=4, duration=first.work_seconds,
                         replaces=first.replaces, check=check, start_over=lambda: shutil.rmtree(out))
    assert log.landed >= 10

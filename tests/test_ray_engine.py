"""The Ray engine writes the same scope as the local engine, even when a worker dies mid-run.

One local Ray cluster (2 CPUs) is shared by the whole module: Ray takes several seconds to start.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from latentscope.errors import InputError
from latentscope.ingest import encode
from latentscope.scope import Scope

from conftest import REPO, make_image_folder
from test_encode import BAD_FILES, add_bad_files

ray = pytest.importorskip("ray")

COLUMNS = ["id", "path", "sha256", "width", "height", "status", "error", "label", "row", "bytes", "mtime_ns"]
ACTOR_TITLE = "_EncodeActor"


def assert_same_scope(got_path: Path, want_path: Path) -> None:
    got, want = Scope(got_path), Scope(want_path)
    pd.testing.assert_frame_equal(got.manifest()[COLUMNS], want.manifest()[COLUMNS])
    assert got.latents().shape == want.latents().shape and got.latents().dtype == np.float16
    np.testing.assert_allclose(got.latents().astype(np.float32), want.latents().astype(np.float32), atol=2e-3, rtol=1e-3)
    assert sorted(p.name for p in (got_path / "thumbs").iterdir()) == sorted(p.name for p in (want_path / "thumbs").iterdir())
    assert got.meta["preprocess"] == want.meta["preprocess"]
    assert not (got_path / ".partial" / "encode").exists()


def test_ray_engine_writes_the_local_engines_scope(tmp_path, kl_folder, ray_cluster):
    images = make_image_folder(tmp_path / "images", 22)
    add_bad_files(images)
    options = dict(batch_size=4, max_pixels=200 * 200, progress=False, device="cpu")
    local = encode(images, kl_folder, tmp_path / "local", **options)
    remote = encode(images, kl_folder, tmp_path / "ray", engine="ray", **options)

    assert (remote.found, remote.encoded, remote.failed) == (local.found, local.encoded, local.failed) == (29, 22, len(BAD_FILES))
    assert remote.reasons == local.reasons
    assert_same_scope(tmp_path / "ray", tmp_path / "local")
    stage = Scope(tmp_path / "ray").meta["stages"]["encode"]
    assert stage["engine"] == "ray" and stage["device"].startswith("ray: 2 model actors (cpu)")


def test_ray_append_reuses_content_and_draws_the_same_samples(tmp_path, kl_folder, ray_cluster):
    """--sample draws noise per batch: the Ray engine cuts the same batches, so the samples are identical."""
    images = make_image_folder(tmp_path / "images", 9)
    options = dict(batch_size=4, sample=True, seed=3, progress=False, device="cpu")
    encode(images, kl_folder, tmp_path / "local", **options)
    shutil.copytree(tmp_path / "local", tmp_path / "ray")  # the same scope to start from; the append is what is tested
    make_image_folder(tmp_path / "more", 6, seed=9, classes=("c",))
    shutil.copytree(tmp_path / "more" / "c", images / "c")
    shutil.copy(images / "a" / "img0000.png", images / "a" / "copy_of_0.png")

    local = encode(images, kl_folder, tmp_path / "local", **options)
    remote = encode(images, kl_folder, tmp_path / "ray", engine="ray", **options)
    assert (remote.unchanged, remote.encoded, remote.reused) == (local.unchanged, local.encoded, local.reused) == (9, 6, 1)
    assert_same_scope(tmp_path / "ray", tmp_path / "local")


def test_ray_engine_refines_like_the_local_engine(tmp_path, kl_folder, ray_cluster):
    images = make_image_folder(tmp_path / "images", 6)
    options = dict(batch_size=4, refine=3, progress=False, device="cpu")
    encode(images, kl_folder, tmp_path / "local", **options)
    encode(images, kl_folder, tmp_path / "ray", engine="ray", **options)
    assert_same_scope(tmp_path / "ray", tmp_path / "local")
    assert Scope(tmp_path / "ray").meta["preprocess"]["refine"] == 3


def _encode_actor_pids() -> list[int]:
    """Processes whose title Ray set to the model actor's (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if entry.name.isdigit() and cmdline.startswith("ray::") and ACTOR_TITLE in cmdline:
            pids.append(int(entry.name))
    return pids


@pytest.mark.slow
def test_worker_killed_mid_run_still_gives_the_local_scope(tmp_path, kl_folder, ray_cluster):
    images = make_image_folder(tmp_path / "images", 240)
    add_bad_files(images)
    options = dict(batch_size=4, max_pixels=200 * 200, progress=False, device="cpu", checkpoint_images=8)
    encode(images, kl_folder, tmp_path / "local", **options)

    result: dict = {}

    def run() -> None:
        try:
            result["summary"] = encode(images, kl_folder, tmp_path / "ray", engine="ray", **options)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    partial = tmp_path / "ray" / ".partial" / "encode"
    deadline = time.monotonic() + 240
    while not (partial / "shard-000001.parquet").exists():  # model actors are up and results arrive
        assert thread.is_alive(), result
        assert time.monotonic() < deadline
        time.sleep(0.01)
    victims = _encode_actor_pids()
    assert victims, "no model actor process found"
    os.kill(victims[0], signal.SIGKILL)
    thread.join(timeout=300)
    assert not thread.is_alive() and "error" not in result, result
    assert result["summary"].encoded == 240 and result["summary"].failed == len(BAD_FILES)
    assert_same_scope(tmp_path / "ray", tmp_path / "local")


def test_cli_engine_ray_on_a_running_cluster(tmp_path, kl_folder, ray_cluster):
    images = make_image_folder(tmp_path / "images", 5)
    (images / "broken.png").write_text("not an image")
    done = subprocess.run(
        [sys.executable, "-m", "latentscope", "encode", str(images), "--model", str(kl_folder), "--out", str(tmp_path / "s"),
         "--engine", "ray", "--ray-address", ray_cluster, "--ray-actors", "1", "--device", "cpu", "-q"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "5 encoded" in done.stdout and "1 skipped" in done.stdout
    manifest = Scope(tmp_path / "s").manifest()
    assert manifest.loc[manifest.path == "broken.png", "error"].item().startswith("not an image file")
    assert Scope(tmp_path / "s").meta["stages"]["encode"]["device"] == "ray: 1 model actors (cpu)"


def test_without_ray_the_error_says_how_to_install_it(tmp_path, kl_folder):
    images = make_image_folder(tmp_path / "images", 2)
    hide_ray = "import sys, runpy; sys.modules['ray'] = None; sys.argv[0] = 'latentscope'; runpy.run_module('latentscope', run_name='__main__')"
    done = subprocess.run(
        [sys.executable, "-c", hide_ray, "encode", str(images), "--model", str(kl_folder), "--out", str(tmp_path / "s"), "--engine", "ray"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert done.returncode == 2 and done.stderr.strip().endswith("pip install latentscope[ray]"), done.stderr[-2000:]
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()
    with pytest.raises(InputError, match="engine 'spark'"):
        encode(images, kl_folder, tmp_path / "s", engine="spark", progress=False, device="cpu")

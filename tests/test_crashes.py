"""Crash at any moment: kill -9 at seeded random times, rerun, and the result equals an uninterrupted run.

Also a full disk: a write that fails with ENOSPC leaves the scope exactly as it was.
"""

from __future__ import annotations

import errno
import random
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest

from latentscope.errors import StorageError
from latentscope.ingest import encode
from latentscope.scope import Scope

from conftest import make_image_folder

ENCODE = textwrap.dedent(
    """
    import sys
    from latentscope.ingest import encode
    encode(sys.argv[1], sys.argv[2], sys.argv[3], batch_size=4, checkpoint_images=8, checkpoint_seconds=0.2,
           progress=False, device="cpu", workers=1)
    """
)
COLUMNS = ["id", "path", "sha256", "width", "height", "status", "error", "row"]


def run_encode(images, model, out):
    return subprocess.Popen([sys.executable, "-c", ENCODE, str(images), str(model), str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill_at_random_times(command, n_kills: int, seed: int, duration: float) -> list[float]:
    """Start ``command()`` and kill -9 it at seeded random moments until it completes once; return kill times."""
    rng = random.Random(seed)
    kills = []
    for _ in range(n_kills):
        process = command()
        delay = rng.uniform(0.2, duration)
        try:
            process.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            kills.append(delay)
    final = command()
    assert final.wait(timeout=600) == 0, final.stderr.read().decode()[-2000:]
    return kills


@pytest.mark.slow
def test_encode_survives_kill_9_at_random_points(tmp_path, kl_folder):
    images = make_image_folder(tmp_path / "images", 120)
    reference = tmp_path / "reference"
    started = time.monotonic()
    assert run_encode(images, kl_folder, reference).wait(timeout=600) == 0
    duration = time.monotonic() - started

    out = tmp_path / "scope"
    kills = kill_at_random_times(lambda: run_encode(images, kl_folder, out), 10, seed=2, duration=duration)
    assert len(kills) >= 5, "most kills should land while the run is still going"
    got, want = Scope(out), Scope(reference)
    pd.testing.assert_frame_equal(got.manifest()[COLUMNS], want.manifest()[COLUMNS])
    np.testing.assert_array_equal(got.latents(), want.latents())
    assert not list(out.rglob("*.tmp")) and not (out / ".partial" / "encode").exists()


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

"""The encode stage end to end: bad files, appends, resume after kill -9, the CLI."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from latentscope.codec import Codec
from latentscope.errors import ScopeError
from latentscope.images import prepare_image, read_file
from latentscope.ingest import encode
from latentscope.scope import Scope

from conftest import make_image_folder, shape_image

BAD_FILES = {
    "bad/not_image.png": "not an image file",
    "bad/empty.jpg": "file is empty",
    "bad/truncated.png": "truncated",
    "bad/corrupt.jpg": "corrupt",
    "bad/huge.png": "over the limit",
    "bad/broken_link.png": "broken symbolic link",
    "bad/fifo.png": "not a regular file",
}


def add_bad_files(folder: Path) -> None:
    bad = folder / "bad"
    bad.mkdir(parents=True)
    rng = np.random.default_rng(5)
    (bad / "not_image.png").write_text("hello, I am text")
    (bad / "empty.jpg").write_bytes(b"")
    png = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(png, format="PNG")
    (bad / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    (bad / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(rng.integers(0, 255, 300, dtype=np.uint8)))
    Image.new("RGB", (300, 300)).save(bad / "huge.png")  # over the max_pixels the tests pass
    os.symlink(folder / "nowhere.png", bad / "broken_link.png")
    (bad / "folder.png").mkdir()  # a folder with an image's name is walked as a folder
    os.mkfifo(bad / "fifo.png")
    os.symlink(folder, bad / "loop")  # a folder loop; must not hang or duplicate


def test_bad_files_are_recorded_and_good_ones_all_encoded(tmp_path, kl_folder):
    images = make_image_folder(tmp_path / "images", 20)
    add_bad_files(images)
    summary = encode(images, kl_folder, tmp_path / "scope", batch_size=4, max_pixels=200 * 200, progress=False, device="cpu")
    assert summary.found == 20 + len(BAD_FILES)
    assert summary.encoded == 20 and summary.failed == len(BAD_FILES)

    scope = Scope(tmp_path / "scope")
    manifest = scope.manifest()
    assert list(manifest.columns[:7]) == ["id", "path", "sha256", "width", "height", "status", "error"]
    errors = manifest[manifest.status == "error"].set_index("path")["error"]
    for path, reason in BAD_FILES.items():
        assert reason in errors[path], (path, errors[path])
    ok = manifest[manifest.status == "ok"]
    assert len(ok) == 20 and (ok.error == "").all()
    assert ok["row"].tolist() == list(range(20))
    assert ok["label"].tolist() == ["a"] * 10 + ["b"] * 10
    latents = scope.latents()
    assert latents.dtype == np.float16 and latents.shape == (20, 4, 16, 16)
    assert all(scope.thumb_path(i).exists() for i in ok["id"])
    again = encode(images, kl_folder, tmp_path / "scope", progress=False, device="cpu")
    assert (again.unchanged, again.unchanged_skipped, again.failed) == (summary.found, len(BAD_FILES), 0)
    assert f"({len(BAD_FILES)} of them skipped before" in again.lines()[1]


def test_latents_match_direct_model_encode(tmp_path, kl_folder):
    images = make_image_folder(tmp_path / "images", 6)
    encode(images, kl_folder, tmp_path / "scope", batch_size=4, progress=False, device="cpu")
    scope = Scope(tmp_path / "scope")
    codec = Codec.from_pretrained(kl_folder, device="cpu")
    pixels = np.stack([prepare_image(read_file(scope.image_path(i)), (32, 32)).pixels for i in scope.ok_manifest()["id"]])
    expected = codec.encode_pixels(pixels).astype(np.float16)
    np.testing.assert_allclose(scope.latents().astype(np.float32), expected.astype(np.float32), atol=2e-3)
    meta = scope.meta
    assert meta["model"]["class"] == "AutoencoderKL" and meta["model"]["latent_shape"] == [4, 16, 16]
    assert meta["stages"]["encode"]["params"]["resize"] == "center-crop"
    assert "torch" in meta["stages"]["encode"]["versions"]


def test_append_encodes_only_new_and_reuses_identical_content(tmp_path, kl_folder):
    images = make_image_folder(tmp_path / "images", 8)
    out = tmp_path / "scope"
    encode(images, kl_folder, out, batch_size=4, progress=False, device="cpu")
    before = Scope(out).latents().copy()

    make_image_folder(tmp_path / "more", 3, seed=9, classes=("c",))
    shutil.copytree(tmp_path / "more" / "c", images / "c")
    shutil.copy(images / "a" / "img0000.png", images / "a" / "copy_of_0.png")
    summary = encode(images, kl_folder, out, batch_size=4, progress=False, device="cpu")
    assert (summary.unchanged, summary.encoded, summary.reused) == (8, 3, 1)

    scope = Scope(out)
    manifest = scope.manifest()
    assert len(manifest) == 12 and manifest["id"].tolist() == list(range(12))
    np.testing.assert_array_equal(scope.latents()[:8], before)
    copy_row = manifest.loc[manifest.path == "a/copy_of_0.png", "row"].item()
    np.testing.assert_array_equal(scope.latents()[copy_row], before[0])

    again = encode(images, kl_folder, out, batch_size=4, progress=False, device="cpu")
    assert (again.encoded, again.reused, again.unchanged) == (0, 0, 12)


def test_changed_file_is_read_again(tmp_path, kl_folder):
    images = make_image_folder(tmp_path / "images", 4)
    out = tmp_path / "scope"
    encode(images, kl_folder, out, progress=False, device="cpu")
    target = images / "a" / "img0000.png"
    shape_image(np.random.default_rng(77), (30, 30)).save(target)
    os.utime(target, ns=(time.time_ns(), time.time_ns() + 10**9))
    summary = encode(images, kl_folder, out, progress=False, device="cpu")
    assert summary.encoded == 1
    manifest = Scope(out).manifest()
    old = manifest[manifest.id == 0].iloc[0]
    assert old.status == "error" and "read again as id 4" in old.error
    assert manifest.loc[manifest.id == 4, "status"].item() == "ok"
    assert len(Scope(out).latents()) == 4


def test_in_memory_array(tmp_path, kl_folder):
    array = np.random.default_rng(0).random((5, 32, 32))
    summary = encode(array, kl_folder, tmp_path / "scope", labels=[0, 1, 0, 1, 0], progress=False, device="cpu")
    assert summary.encoded == 5
    assert sorted(Scope(tmp_path / "scope").manifest()["label"]) == ["0", "0", "0", "1", "1"]


def test_other_settings_into_same_scope_refused_and_nothing_written(tmp_path, kl_folder):
    images = make_image_folder(tmp_path / "images", 3)
    out = tmp_path / "scope"
    encode(images, kl_folder, out, progress=False, device="cpu")
    stamp = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(ScopeError, match="resize"):
        encode(images, kl_folder, out, resize="pad", progress=False, device="cpu")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamp


def test_refined_latents_are_stored_and_recorded(tmp_path, kl_folder):
    images = make_image_folder(tmp_path / "images", 5)
    out = tmp_path / "scope"
    encode(images, kl_folder, out, batch_size=4, refine=8, progress=False, device="cpu")
    scope = Scope(out)
    assert scope.meta["preprocess"]["refine"] == 8
    codec = Codec.from_pretrained(kl_folder, device="cpu")
    pixels = np.stack([prepare_image(read_file(scope.image_path(i)), (32, 32)).pixels for i in scope.ok_manifest()["id"]])
    expected = codec.encode_pixels(pixels, refine=8).astype(np.float16).astype(np.float32)
    stored = scope.latents().astype(np.float32)
    np.testing.assert_allclose(stored, expected, atol=5e-3)
    assert np.abs(stored - codec.encode_pixels(pixels)).max() > 0.05  # and they are not the encoder's own
    with pytest.raises(ScopeError, match="refine=8"):
        encode(images, kl_folder, out, progress=False, device="cpu")


def test_scopes_from_before_refine_count_as_unrefined(tmp_path, kl_folder):
    images = make_image_folder(tmp_path / "images", 3)
    out = tmp_path / "scope"
    encode(images, kl_folder, out, progress=False, device="cpu")
    meta = json.loads((out / "scope.json").read_text())
    del meta["preprocess"]["refine"]
    (out / "scope.json").write_text(json.dumps(meta))
    make_image_folder(tmp_path / "more", 2, seed=5, classes=("c",))
    shutil.copytree(tmp_path / "more" / "c", images / "c")
    assert encode(images, kl_folder, out, progress=False, device="cpu").encoded == 2


RUN_ENCODE = textwrap.dedent(
    """
    import signal, sys
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C semantics even when started with SIGINT ignored
    from latentscope.ingest import encode
    encode(sys.argv[1], sys.argv[2], sys.argv[3], batch_size=4, checkpoint_images=8, progress=False, device="cpu", workers=1)
    """
)


def _run_encode(args, **kwargs):
    return subprocess.Popen([sys.executable, "-c", RUN_ENCODE, *map(str, args)], **kwargs)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_resume_after_kill_matches_uninterrupted_run(tmp_path, kl_folder, sig):
    images = make_image_folder(tmp_path / "images", 160)
    add_bad_files(images)
    (images / "bad" / "fifo.png").unlink()
    reference = tmp_path / "reference"
    assert _run_encode([images, kl_folder, reference]).wait(timeout=300) == 0

    out = tmp_path / "scope"
    process = _run_encode([images, kl_folder, out])
    partial = out / ".partial" / "encode"
    deadline = time.monotonic() + 120
    while not (partial / "shard-000002.parquet").exists():
        assert process.poll() is None, "encode finished before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    process.send_signal(sig)
    process.wait(timeout=60)
    assert not (out / "images.parquet").exists()
    assert _run_encode([images, kl_folder, out]).wait(timeout=300) == 0

    got, want = Scope(out), Scope(reference)
    columns = ["id", "path", "sha256", "width", "height", "status", "error", "row"]
    pd.testing.assert_frame_equal(got.manifest()[columns], want.manifest()[columns])
    np.testing.assert_array_equal(got.latents(), want.latents())
    assert not (out / ".partial" / "encode").exists()
    assert not list(out.rglob("*.tmp"))


def test_commit_interrupted_between_renames_is_rolled_forward(tmp_path, kl_folder, monkeypatch):
    images = make_image_folder(tmp_path / "images", 4)
    out = tmp_path / "scope"
    encode(images, kl_folder, out, progress=False, device="cpu")
    make_image_folder(tmp_path / "images", 6, seed=3, classes=("z",))

    def crash(self, marker):
        os.replace(self.path / "latents.npy.next", self.path / "latents.npy")
        raise KeyboardInterrupt

    monkeypatch.setattr(Scope, "_roll_forward", crash)
    with pytest.raises(KeyboardInterrupt):
        encode(tmp_path / "images", kl_folder, out, progress=False, device="cpu")
    monkeypatch.undo()
    scope = Scope(out)  # opening finishes the commit
    assert len(scope.manifest()) == 10 and len(scope.latents()) == 10


def test_cli_encode_and_errors(tmp_path, kl_folder):
    images = make_image_folder(tmp_path / "images", 3)
    ok = subprocess.run(
        [sys.executable, "-m", "latentscope", "encode", str(images), "--model", str(kl_folder), "--out", str(tmp_path / "s"), "-q"],
        capture_output=True, text=True, timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    assert "3 encoded" in ok.stdout and "images/s" in ok.stdout
    for args, needle in [
        ([str(tmp_path / "missing"), "--model", str(kl_folder), "--out", str(tmp_path / "x")], "no such folder"),
        ([str(images), "--model", str(tmp_path / "nomodel"), "--out", str(tmp_path / "x")], "--model"),
        ([str(images), "--model", str(kl_folder), "--out", str(tmp_path / "x"), "--batch-size", "-3"], "at least 1"),
    ]:
        bad = subprocess.run([sys.executable, "-m", "latentscope", "encode", *args], capture_output=True, text=True, timeout=300)
        assert bad.returncode == 2, bad.stderr
        assert needle in bad.stderr and len(bad.stderr.strip().splitlines()) <= 2
        assert not (tmp_path / "x").exists()


def test_a_file_that_hangs_is_recorded_and_the_run_completes(tmp_path, kl_folder, monkeypatch):
    import latentscope.reading as reading  # the encoder's file reading (shared by the engines)

    images = make_image_folder(tmp_path / "images", 6)
    real = reading.prepare_image

    def slow_for_one(data, *args, **kwargs):
        if data == (images / "a" / "img0002.png").read_bytes():
            time.sleep(30)
        return real(data, *args, **kwargs)

    monkeypatch.setattr(reading, "prepare_image", slow_for_one)
    started = time.monotonic()
    summary = encode(images, kl_folder, tmp_path / "scope", batch_size=2, file_timeout=1.0, progress=False, device="cpu")
    assert time.monotonic() - started < 20
    assert summary.encoded == 5 and summary.failed == 1
    manifest = Scope(tmp_path / "scope").manifest()
    assert "timed out" in manifest.loc[manifest.path == "a/img0002.png", "error"].item()

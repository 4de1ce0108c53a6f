"""latentscope doctor: each kind of damage is reported and repaired, nothing computed is dropped silently."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from latentscope.doctor import diagnose as _diagnose
from latentscope.ingest import encode
from latentscope.scope import Scope

from conftest import make_image_folder, write_test_map_and_scores
from reliability import note


def diagnose(*args, **kwargs):
    """The doctor, with each problem it finds noted for the reliability benchmark (by kind: numbers and names dropped)."""
    report = _diagnose(*args, **kwargs)
    for finding in report.findings:
        kind = re.sub(r"\d+", "N", finding.problem.split(" (")[0])
        note("bad-input", what="damaged scope", variant=re.sub(r"\S+\.parquet|'[^']*'", "X", kind), fixed=finding.fixed)
    return report


@pytest.fixture
def scope_path(tmp_path, kl_folder):
    images = make_image_folder(tmp_path / "images", 12)
    encode(images, kl_folder, tmp_path / "scope", progress=False, device="cpu")
    write_test_map_and_scores(tmp_path / "scope")
    return tmp_path / "scope"


def test_healthy_scope_needs_nothing(scope_path):
    report = diagnose(scope_path)
    assert report.healthy and report.findings == []


def truncate_latents(scope_path, rows: int) -> int:
    """Cut the last ``rows`` latents and a few more bytes off latents.npy; returns its size before."""
    latents = scope_path / "latents.npy"
    size = latents.stat().st_size
    with open(latents, "r+b") as handle:
        handle.truncate(size - rows * Scope(scope_path).latents()[0].nbytes - 7)
    return size


def test_truncated_latents_are_salvaged_and_lost_rows_reencoded(scope_path):
    reference = np.array(Scope(scope_path).latents())
    latents = scope_path / "latents.npy"
    size = truncate_latents(scope_path, 3)
    with pytest.raises(Exception):
        Scope(scope_path).latents()
    dry = diagnose(scope_path, repair=False, device="cpu")
    assert not dry.healthy and "truncated" in dry.lines()[0]
    assert latents.stat().st_size < size  # the dry run changed nothing
    report = diagnose(scope_path, device="cpu")
    assert report.healthy and "re-encoded 4" in report.lines()[0]
    np.testing.assert_allclose(Scope(scope_path).latents().astype(np.float32), reference.astype(np.float32), atol=2e-3)


def test_lost_rows_of_a_refined_scope_are_reencoded_refined(tmp_path, kl_folder):
    out = tmp_path / "refined"
    encode(make_image_folder(tmp_path / "images", 6), kl_folder, out, refine=4, progress=False, device="cpu")
    reference = np.array(Scope(out).latents()).astype(np.float32)
    truncate_latents(out, 2)
    report = diagnose(out, device="cpu")
    assert report.healthy and "re-encoded 3" in report.lines()[0]
    np.testing.assert_allclose(Scope(out).latents().astype(np.float32), reference, atol=5e-3)


def test_orphan_latent_rows_are_dropped(scope_path):
    scope = Scope(scope_path)
    latents = np.array(scope.latents())
    np.save(scope_path / "latents.npy", np.concatenate([latents, latents[:2]]))
    report = diagnose(scope_path)
    assert report.healthy and "orphans" in report.lines()[0]
    assert np.load(scope_path / "latents.npy").shape[0] == len(latents)


def test_lost_rows_whose_files_changed_become_errors(scope_path):
    scope = Scope(scope_path)
    np.save(scope_path / "latents.npy", np.array(scope.latents())[:-1])
    last = scope.ok_manifest().iloc[-1]
    (scope.images_root / last.path).write_bytes(b"changed")
    report = diagnose(scope_path, device="cpu")
    assert report.healthy
    manifest = Scope(scope_path).manifest()
    assert manifest.loc[manifest.id == last.id, "status"].item() == "error"
    assert "latent lost" in manifest.loc[manifest.id == last.id, "error"].item()
    assert len(Scope(scope_path).latents()) == len(manifest[manifest.status == "ok"])


def test_missing_and_unreadable_tables_and_orphan_rows(scope_path):
    (scope_path / "maps" / "default.parquet").unlink()
    (scope_path / "scores" / "default.parquet").write_bytes(b"garbage")
    extra = pd.DataFrame({"id": [0, 999], "x": [0.0, 1.0], "y": [0.0, 1.0]})
    extra.to_parquet(scope_path / "maps" / "other.parquet")
    report = diagnose(scope_path)
    text = "\n".join(report.lines())
    assert report.healthy
    assert "map 'default' but its file is missing" in text
    assert "scores/default.parquet is unreadable" in text and ".damaged" in text
    assert "1 rows for ids not in the manifest" in text
    assert list((scope_path / ".damaged" / "scores").iterdir())
    assert pd.read_parquet(scope_path / "maps" / "other.parquet")["id"].tolist() == [0]
    assert "default" not in Scope(scope_path).meta["maps"]


def test_half_written_files_and_missing_thumbnails(scope_path):
    os.remove(Scope(scope_path).thumb_path(3))
    (scope_path / ".latents.npy.abc.tmp").write_bytes(b"half")  # after that open: opening a scope removes these too
    report = diagnose(scope_path)
    assert report.healthy and len(report.findings) == 2
    assert Scope(scope_path).thumb_path(3).is_file()
    assert not list(scope_path.glob("*.tmp"))


def test_opening_a_scope_removes_a_commit_marker_half_written_by_a_killed_run(scope_path):
    (scope_path / ".partial").mkdir(exist_ok=True)
    half = scope_path / ".partial" / ".commit.json.k1ll3d.tmp"  # a kill inside the marker's atomic write leaves this
    half.write_text('{"latents": "lat')
    Scope(scope_path)
    assert not half.exists()


def test_cli_doctor_exit_codes(scope_path, tmp_path):
    ok = subprocess.run([sys.executable, "-m", "latentscope", "doctor", str(scope_path)], capture_output=True, text=True)
    assert ok.returncode == 0 and "healthy" in ok.stdout
    missing = subprocess.run([sys.executable, "-m", "latentscope", "doctor", str(tmp_path / "nope")], capture_output=True, text=True)
    assert missing.returncode == 2 and "not a scope" in missing.stderr

"""Every example runs in its quick mode."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO


def run_example(name: str, *args: str, timeout: int = 600) -> str:
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / name), "--quick", *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_encode_folder_example(tmp_path, kl_folder):
    out = run_example("encode_folder.py", "--model", str(kl_folder), "--out", str(tmp_path / "scope"))
    assert "100 encoded" in out and "latents: (100, 4, 16, 16) float16" in out
    plain, refined = map(float, re.search(r"encoder ([\d.]+) dB, refined \(25 steps\) ([\d.]+) dB", out).groups())
    assert refined > plain


def test_train_model_example(tmp_path):
    out = run_example("train_model.py", "--out", str(tmp_path / "model"))
    assert "validation PSNR" in out and "encoded 64 images to latents (4, 4, 4)" in out and "sampled 8 new images of 16x16" in out
    assert (tmp_path / "model" / "README.md").exists()


def test_project_map_example(tmp_path, kl_folder):
    scope = tmp_path / "scope"
    from latentscope.datasets import write_digits
    from latentscope.ingest import encode

    encode(write_digits(tmp_path / "digits", limit=150), kl_folder, scope, progress=False, thumbnails=False)
    out = run_example("project_map.py", "--scope", str(scope), "--model", str(kl_folder))
    assert "map 'default': 150 points in 2-D" in out and "second map: graph reused: True" in out
    assert "walk across the map:" in out and "trustworthiness (k=10)" in out
    assert (tmp_path / "map_grid.png").is_file()


@pytest.mark.slow
def test_ray_encode_example(tmp_path):
    pytest.importorskip("ray")
    out = run_example("ray_encode.py", "--out", str(tmp_path / "scope"))
    assert "found 64 image files: 64 encoded" in out and "ray: 2 model actors (cpu)" in out
    assert "same manifest as the local engine: True" in out


def test_score_anomalies_example(tmp_path):
    out = run_example("score_anomalies.py", "--out", str(tmp_path))
    assert "120 images scored with diffusion" in out and "defective images are among the top 6" in out
    assert "heatmap of the most anomalous image" in out and "| defects: blob, scratch, blur, colour, noise | auroc |" in out


def test_annotate_metadata_example(tmp_path, kl_folder):
    out = run_example("annotate_metadata.py", "--model", str(kl_folder), "--out", str(tmp_path))
    assert "metadata.csv: matched 150 of 150 rows to images by column 'image' (stem); columns: label, loop, ink" in out
    assert "labels now: {'even': " in out and "kNN label agreement (k=10, 2 labels)" in out
    assert "tagged 15 images 'heavy'" in out and "metadata columns: label, loop, ink, heavy" in out
    assert "direction walk loop=no -> loop=yes" in out and (tmp_path / "loop-direction.png").is_file()
    assert "metadata (4 columns):" in out and "  heavy: tag, 15 of 150 images marked" in out

"""Every example runs in its quick mode."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def run_example(name: str, *args: str, timeout: int = 600) -> str:
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / name), "--quick", *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_encode_folder_example(tmp_path, kl_folder):
    out = run_example("encode_folder.py", "--model", str(kl_folder), "--out", str(tmp_path / "scope"))
    assert "100 encoded" in out and "latents: (100, 4, 16, 16) float16" in out


def test_train_model_example(tmp_path):
    out = run_example("train_model.py", "--out", str(tmp_path / "model"))
    assert "validation PSNR" in out and "encoded 64 images to latents (4, 4, 4)" in out and "sampled 8 new images of 16x16" in out
    assert (tmp_path / "model" / "README.md").exists()

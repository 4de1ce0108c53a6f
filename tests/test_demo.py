"""The shipped digits model reproduces its recorded metrics; ``latentscope demo`` runs its stages."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pandas as pd
import pytest
import torch

from latentscope.cli import main
from latentscope.codec import BUILTIN_ROOT, Codec
from latentscope.datasets import digits_array
from latentscope.demo import STAGES, run_demo
from latentscope.denoiser import Denoiser
from latentscope.training.metrics import psnr, ssim
from servers import free_port, live_server

SHIPPED = BUILTIN_ROOT / "digits"


def _record() -> dict:
    return json.loads((SHIPPED / "training.json").read_text())


def test_shipped_weights_are_small_safetensors():
    files = [p for p in SHIPPED.rglob("*") if p.is_file()]
    assert {"vae", "unet", "scheduler"} <= {p.parent.name for p in files}
    assert all(p.suffix != ".bin" for p in files) and sum(p.stat().st_size for p in files) < 12 * 2**20
    assert "latentscope train" in (SHIPPED / "README.md").read_text()


def test_shipped_model_reproduces_its_recorded_reconstruction_psnr():
    record = _record()
    images, labels = digits_array(32)
    names = [f"{labels[i]}/{i:04d}.png" for i in range(len(images))]  # the layout write_digits trained on
    index = {name: i for i, name in enumerate(names)}
    val = images[[index[name] for name in record["data"]["validation_names"]]]
    codec = Codec.from_pretrained("builtin:digits", device="cpu")
    recon = codec.decode_to_pixels(codec.encode_pixels(val))
    as_tensor = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float()  # noqa: E731
    measured = float(psnr(as_tensor(val), as_tensor(recon)).mean())
    assert measured == pytest.approx(record["autoencoder"]["metrics"]["psnr"], abs=0.1)
    assert float(ssim(as_tensor(val), as_tensor(recon)).mean()) == pytest.approx(record["autoencoder"]["metrics"]["ssim"], abs=0.005)
    assert measured > 24.0


def test_shipped_denoiser_loads_and_samples():
    denoiser = Denoiser.from_pretrained("builtin:digits", device="cpu")
    codec = Codec.from_pretrained("builtin:digits", device="cpu")
    noise = torch.randn(4, *codec.latent_shape((32, 32)), generator=torch.Generator().manual_seed(0))
    samples = codec.decode_to_pixels(denoiser.sample(noise, 10).numpy())
    assert samples.shape == (4, 32, 32, 3) and samples.std() > 10


def test_demo_stages_write_images_encode_project_and_score(tmp_path, capsys):
    assert [name for name, _ in STAGES][:5] == ["images", "model", "encode", "project", "score"]
    assert main(["-q", "demo", "--workdir", str(tmp_path), "--no-serve"]) == 0
    out = capsys.readouterr().out
    assert "1797 handwritten digits" in out and "1797 encoded" in out and "demo finished" in out
    latents = np.load(tmp_path / "digits.scope" / "latents.npy", mmap_mode="r")
    manifest = pd.read_parquet(tmp_path / "digits.scope" / "images.parquet")
    assert latents.shape == (1797, 4, 8, 8) and (manifest.status == "ok").all()
    assert sorted(manifest.label.unique()) == [str(d) for d in range(10)]
    positions = pd.read_parquet(tmp_path / "digits.scope" / "maps" / "default.parquet")
    assert len(positions) == 1797 and np.isfinite(positions[["x", "y"]].to_numpy()).all()
    scores = pd.read_parquet(tmp_path / "digits.scope" / "scores" / "default.parquet")
    assert len(scores) == 1797 and np.isfinite(scores["score"]).all() and "most anomalous 5" in out
    # rerunning reuses the finished work, the map included
    lines = []
    run = run_demo(tmp_path, progress=False, report=lines.append)
    assert any("1797 already in the scope" in line for line in lines) and run.results["scope"] == tmp_path / "digits.scope"
    assert any("up to date with the latents (reused)" in line for line in lines)
    assert any("'default' is up to date with the images (reused)" in line for line in lines)


@pytest.mark.slow
def test_demo_ends_with_a_working_dashboard_url(tmp_path):
    port = free_port()
    args = ["-q", "demo", "--workdir", str(tmp_path), "--port", str(port)]
    with live_server(args, port, tmp_path / "demo.log", timeout=300) as (base, _):
        lines = (tmp_path / "demo.log").read_text().splitlines()
        assert lines[-1] == f"latentscope explorer running at {base}  (Ctrl-C to stop)"
        with urllib.request.urlopen(base, timeout=30) as response:
            assert response.status == 200 and b"latentscope" in response.read().lower()

"""Loading diffusers autoencoders through the same code users use, and latent scaling."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from latentscope.codec import Codec, locate_component
from latentscope.errors import ModelError


@pytest.mark.parametrize("fixture", ["kl_folder", "taesd_folder", "pipeline_folder"])
def test_loads_each_class_and_layout(request, fixture):
    folder = request.getfixturevalue(fixture)
    codec = Codec.from_pretrained(folder, device="cpu")
    assert codec.class_name == ("AutoencoderTiny" if fixture == "taesd_folder" else "AutoencoderKL")
    assert codec.image_size == (32, 32)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    latents = codec.encode(images)
    assert latents.shape == (2, *codec.latent_shape((32, 32)))
    decoded = codec.decode(latents)
    assert decoded.shape == images.shape
    assert decoded.min() >= -1 and decoded.max() <= 1
    assert len(codec.fingerprint) == 16


def test_pipeline_layout_resolves_to_vae_subfolder(pipeline_folder):
    location = locate_component(pipeline_folder)
    assert location.subfolder == "vae" and location.is_local


def test_scaling_and_shift_applied_in_one_place(kl_folder):
    codec = Codec.from_pretrained(kl_folder, device="cpu")
    assert (codec.scaling_factor, codec.shift_factor) == (0.5, 0.1)
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    raw = codec.vae.encode(images).latent_dist.mean
    scaled = codec.encode(images)
    torch.testing.assert_close(scaled, (raw - 0.1) * 0.5)
    torch.testing.assert_close(codec.decode(scaled), codec.vae.decode(raw).sample.clamp(-1, 1), rtol=1e-4, atol=1e-4)


def test_sample_draws_differ_from_mean_and_are_seeded(kl_folder):
    codec = Codec.from_pretrained(kl_folder, device="cpu")
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    mean = codec.encode(images)
    a = codec.encode(images, sample=True, generator=torch.Generator().manual_seed(1))
    b = codec.encode(images, sample=True, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, mean)


def test_numpy_helpers_round_trip_shapes(taesd_folder):
    codec = Codec.from_pretrained(taesd_folder, device="cpu")
    pixels = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    latents = codec.encode_pixels(pixels, batch_size=2)
    assert latents.shape == (5, *codec.latent_shape((32, 32)))
    assert codec.decode_to_pixels(latents, batch_size=2).shape == (5, 32, 32, 3)


def test_model_errors_name_the_problem(tmp_path, kl_folder):
    with pytest.raises(ModelError, match="no such folder"):
        Codec.from_pretrained(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="neither config.json"):
        Codec.from_pretrained(empty)
    not_vae = tmp_path / "unet"
    not_vae.mkdir()
    (not_vae / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ModelError, match="not an autoencoder"):
        Codec.from_pretrained(not_vae)
    bogus = tmp_path / "bogus"
    bogus.mkdir()
    (bogus / "config.json").write_text(json.dumps({"_class_name": "os.system"}))
    with pytest.raises(ModelError, match="not a diffusers model"):
        Codec.from_pretrained(bogus)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((kl_folder / "config.json").read_text())
    (pickled / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelError, match="safetensors"):
        Codec.from_pretrained(pickled)
    with pytest.raises(ModelError, match="built-in"):
        Codec.from_pretrained("builtin:nope")


def test_unknown_hub_id_fails_with_a_one_line_reason(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="Hugging Face Hub"):
        Codec.from_pretrained("nobody/no-such-model-latentscope")


def test_hub_id_loads_from_a_local_hub_cache(tmp_path, monkeypatch, pipeline_folder):
    """The hub code path, offline: a hub-cache layout (models--owner--name/snapshots/<rev>/...)."""
    import shutil

    revision = "0" * 40
    repo = tmp_path / "hub" / "models--someone--tiny-pipeline"
    shutil.copytree(pipeline_folder, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"), raising=False)
    monkeypatch.setattr("diffusers.utils.constants.HF_HUB_OFFLINE", True, raising=False)
    location = locate_component("someone/tiny-pipeline")
    assert (location.is_local, location.subfolder) == (False, "vae")
    codec = Codec.from_pretrained("someone/tiny-pipeline", device="cpu")
    assert codec.class_name == "AutoencoderKL"
    assert codec.encode(torch.zeros(1, 3, 32, 32)).shape == (1, 4, 16, 16)


def test_refine_moves_each_latent_closer_to_its_image_and_never_further(kl_folder):
    codec = Codec.from_pretrained(kl_folder, device="cpu")
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    start = codec.encode(images)  # an inference-mode tensor, as the encode loop hands it over

    def errors(latents):
        return (codec.decode(latents) - images).pow(2).flatten(1).mean(1)

    refined = codec.refine(images, start, steps=20)
    assert refined.shape == start.shape and not refined.requires_grad
    assert (errors(refined) < 0.9 * errors(start)).all()
    torch.testing.assert_close(codec.refine(images, start, steps=0), start)
    for wild in (1e3, 1e5):  # steps far too large: each image keeps whichever latent decoded closest, never a worse one
        kept = codec.refine(images, start, steps=3, learning_rate=wild)
        assert (errors(kept) <= errors(start)).all()
    with torch.inference_mode():  # callers may be in inference mode
        inside = codec.refine(images, start, steps=20)
    torch.testing.assert_close(inside, refined)
    alone = torch.cat([codec.refine(images[i:i + 1], start[i:i + 1], steps=20) for i in range(3)])
    torch.testing.assert_close(alone, refined, rtol=1e-3, atol=1e-4)


def test_encode_pixels_refines_on_request(taesd_folder):
    codec = Codec.from_pretrained(taesd_folder, device="cpu")
    pixels = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    plain, refined = codec.encode_pixels(pixels, batch_size=3), codec.encode_pixels(pixels, batch_size=3, refine=10)

    def error(latents):
        return np.mean((codec.decode_to_pixels(latents).astype(float) - pixels) ** 2)

    assert error(refined) < error(plain)


def test_deep_compression_autoencoder_encodes_a_folder(tmp_path):
    """A DC-AE (SANA's autoencoder family: pixel-shuffle up/down sampling, a deterministic encoder that returns
    ``latent`` rather than a distribution, no ``sample_size``) goes through the same encode path."""
    import diffusers

    from latentscope import encode
    from latentscope.scope import Scope

    if not hasattr(diffusers, "AutoencoderDC"):  # diffusers >= 0.32; the project allows 0.30
        pytest.skip("this diffusers has no AutoencoderDC")
    torch.manual_seed(0)
    diffusers.AutoencoderDC(latent_channels=4, encoder_block_out_channels=(8, 16, 32), decoder_block_out_channels=(8, 16, 32),
                            encoder_layers_per_block=(1, 1, 1), decoder_layers_per_block=(1, 1, 1),
                            encoder_qkv_multiscales=((), (), ()), decoder_qkv_multiscales=((), (), ()),
                            scaling_factor=0.5).save_pretrained(tmp_path / "dc")
    codec = Codec.from_pretrained(tmp_path / "dc", device="cpu")
    assert codec.class_name == "AutoencoderDC" and codec.image_size is None
    assert codec.latent_shape((32, 48)) == (4, 8, 12)
    pixels = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    raw = codec.vae.encode(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1).latent
    np.testing.assert_allclose(codec.encode_pixels(pixels), 0.5 * raw.detach().numpy(), rtol=1e-4, atol=1e-5)
    summary = encode(pixels, tmp_path / "dc", tmp_path / "dc.scope", size=32, progress=False)
    assert summary.encoded == 3
    stored = Scope(tmp_path / "dc.scope").latents()
    assert stored.shape == (3, 4, 8, 8)
    assert codec.decode_to_pixels(stored).shape == (3, 32, 32, 3)

"""The denoiser interface: noise levels, DDIM denoising and inversion with a trained tiny denoiser."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
import torch

from latentscope.denoiser import Denoiser
from latentscope.errors import InputError, ModelError
from latentscope.training import train
from latentscope.training.diffusion import build_scheduler, build_unet

STEPS = 50


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny autoencoder + denoiser trained on 16 px images of smooth colour gradients."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, 16)
    images = []
    for _ in range(64):
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        t = ramp[None, :, None] if rng.random() < 0.5 else ramp[:, None, None]
        images.append(np.broadcast_to(a * (1 - t) + b * t, (16, 16, 3)))
    out = tmp_path_factory.mktemp("denoiser") / "model"
    train(np.stack(images).round().astype(np.uint8), out, size=16, width=8, epochs=6, denoiser_epochs=20,
          batch_size=16, learning_rate=3e-3, progress=False, patience=0)
    from latentscope.codec import Codec

    latents = torch.from_numpy(Codec.from_pretrained(str(out), device="cpu").encode_pixels(np.stack(images)[:16].round().astype(np.uint8)))
    return Denoiser.from_pretrained(str(out), device="cpu"), latents


def _round_trip_error(denoiser, latents, level, steps):
    noise = denoiser.invert(latents, steps, t=level)
    back = denoiser.denoise(noise, level, steps)
    return float((back - latents).pow(2).mean().sqrt() / latents.std()), noise


@pytest.mark.parametrize("level,bound", [(0.5, 0.03), (1.0, 0.15)])
def test_inversion_then_sampling_reconstructs_the_latent(trained, level, bound):
    """DDIM inversion followed by DDIM sampling returns the latent up to the discretisation error,
    which shrinks as the number of steps grows."""
    denoiser, latents = trained
    coarse, _ = _round_trip_error(denoiser, latents, level, 10)
    fine, noise = _round_trip_error(denoiser, latents, level, STEPS)
    print(f"DDIM inversion round trip at t={level}: relative RMS error {coarse:.4f} (10 steps), {fine:.4f} ({STEPS} steps)")
    assert fine < bound and fine < coarse
    # the inverted latents are not the clean ones: inversion really moved them towards noise
    assert float((noise - latents).pow(2).mean().sqrt()) > 0.3 * float(latents.std())


def test_inverted_latents_look_like_noise_at_t_1(trained):
    denoiser, latents = trained
    noise = denoiser.invert(latents, STEPS, t=1.0)
    assert abs(float(noise.mean())) < 0.3 and 0.6 < float(noise.std()) < 1.5


def test_reconstruct_is_identity_at_t_0_and_deterministic(trained):
    denoiser, latents = trained
    assert torch.equal(denoiser.reconstruct(latents, 0.0, 10), latents)
    a = denoiser.reconstruct(latents, 0.3, 10, generator=torch.Generator().manual_seed(1))
    b = denoiser.reconstruct(latents, 0.3, 10, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, latents)


def test_add_noise_follows_the_schedule(trained):
    denoiser, latents = trained
    zeros = torch.zeros(4096, 1, 1, 1)
    noisy = denoiser.add_noise(zeros, 0.5, generator=torch.Generator().manual_seed(0))
    expected = float((1 - denoiser.alphas_cumprod[denoiser.timestep_for(0.5)]).sqrt())
    assert float(noisy.std()) == pytest.approx(expected, rel=0.05)
    assert torch.equal(denoiser.add_noise(latents, 0.0), latents)


def test_sampling_from_noise_gives_latents_of_the_data_scale(trained):
    denoiser, latents = trained
    samples = denoiser.sample(torch.randn(32, *latents.shape[1:], generator=torch.Generator().manual_seed(0)), 25)
    assert torch.isfinite(samples).all()
    assert 0.3 < float(samples.std()) / float(latents.std()) < 2.0


def test_schedule_and_level_checks():
    unet = build_unet((4, 4, 4), (32, 64))
    denoiser = Denoiser(unet, build_scheduler().alphas_cumprod, "v_prediction", device="cpu")
    assert denoiser.schedule(1.0, 4) == [999, 749, 500, 250]
    assert denoiser.schedule(0.0, 4) == []
    assert denoiser.schedule(0.003, 50) == [3, 2, 1]  # duplicates removed at low levels
    with pytest.raises(InputError):
        denoiser.add_noise(torch.zeros(1, 4, 4, 4), 1.5)
    with pytest.raises(InputError):
        denoiser.denoise(torch.zeros(1, 4, 4, 4), 0.5, 0)


def test_features_fall_back_to_the_last_down_block_without_a_mid_block():
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, mid_block_type=None)
    denoiser = Denoiser(unet, build_scheduler().alphas_cumprod, device="cpu")
    latents = np.random.default_rng(0).normal(size=(3, 4, 8, 8)).astype(np.float32)
    features = denoiser.features(latents)
    assert features.shape == (3, 16, 4, 4) and np.isfinite(features).all()
    assert not np.allclose(features[0], features[1])  # they depend on the image


def test_model_without_unet_is_refused(tmp_path, kl_folder):
    with pytest.raises(ModelError, match="no unet"):
        Denoiser.from_pretrained(str(kl_folder))


# --------------------------------------------------------------------------- text-conditioned (Stable Diffusion style)


def test_text_conditioned_unet_runs_with_the_empty_prompt_embedding(stable_diffusion_folder):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    denoiser = Denoiser.from_pretrained(str(stable_diffusion_folder), device="cpu")
    tokenizer = CLIPTokenizer.from_pretrained(stable_diffusion_folder / "tokenizer")
    ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    empty = CLIPTextModel.from_pretrained(stable_diffusion_folder / "text_encoder")(ids)[0]
    unet = UNet2DConditionModel.from_pretrained(stable_diffusion_folder / "unet")
    x, timesteps = torch.randn(3, 4, 8, 8), torch.tensor([10, 500, 900])
    with torch.inference_mode():
        expected = unet(x, timesteps, encoder_hidden_states=empty.expand(3, -1, -1)).sample
        torch.testing.assert_close(denoiser._predict(x, timesteps), expected)
    latents = torch.randn(2, 4, 8, 8)
    back = denoiser.denoise(denoiser.invert(latents, steps=50, t=0.5), 0.5, 50)
    assert ((back - latents) ** 2).mean().sqrt() < 0.05 * latents.pow(2).mean().sqrt()
    assert denoiser.features(latents.numpy()).shape[0] == 2


def test_a_stable_diffusion_style_pipeline_scores_a_scope(stable_diffusion_folder, image_folder, tmp_path):
    import latentscope
    from latentscope.anomaly import score

    out = tmp_path / "sd.scope"
    latentscope.encode(image_folder, str(stable_diffusion_folder), out, progress=False)
    summary = score(out, levels=(0.0, 0.2), steps=2, draws=1, reference_size=8, progress=False, top=2)
    frame = latentscope.Scope(out).read_scores("default")
    assert summary.scored == len(frame) > 0 and np.isfinite(frame["score"]).all()


def test_text_conditioned_unets_we_cannot_condition_are_refused(stable_diffusion_folder, tmp_path, monkeypatch):
    from conftest import tiny_stable_diffusion

    without_text = tiny_stable_diffusion(tmp_path / "no-text", text_encoder=False)
    with pytest.raises(ModelError, match="text-conditioned .*needs the pipeline's text_encoder/ and tokenizer/"):
        Denoiser.from_pretrained(str(without_text))
    sdxl_like = tiny_stable_diffusion(tmp_path / "xl", addition_embed_type="text_time", addition_time_embed_dim=8,
                                      projection_class_embeddings_input_dim=32 + 6 * 8)
    with pytest.raises(ModelError, match="conditioning besides a text embedding .*addition_embed_type='text_time'"):
        Denoiser.from_pretrained(str(sdxl_like))
    monkeypatch.setitem(sys.modules, "transformers", None)  # not installed
    with pytest.raises(ModelError, match="pip install transformers"):
        Denoiser.from_pretrained(str(stable_diffusion_folder))


def test_a_denoiser_for_other_latents_is_refused_in_one_line(image_folder, tmp_path, capsys):
    from diffusers import UNet2DModel

    import latentscope
    from latentscope.cli import main
    from latentscope.codec import BUILTIN_ROOT

    scope = tmp_path / "digits.scope"
    latentscope.encode(image_folder, "builtin:digits", scope, progress=False)
    model = tmp_path / "nine"  # the scope's autoencoder beside a UNet over 9 channels (as an inpainting UNet takes)
    shutil.copytree(BUILTIN_ROOT / "digits" / "vae", model / "vae")
    shutil.copytree(BUILTIN_ROOT / "digits" / "scheduler", model / "scheduler")
    UNet2DModel(sample_size=8, in_channels=9, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                norm_num_groups=4).save_pretrained(model / "unet")
    code = main(["-q", "score", str(scope), "--model", str(model)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "takes 9 latent channels, the autoencoder gives 4" in err[0]

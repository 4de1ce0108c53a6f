"""latentscope train: loss falls, checkpoints resume to the same state, the output loads through --model."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from conftest import make_image_folder, shape_image

from latentscope.cli import main
from latentscope.codec import Codec
from latentscope.denoiser import Denoiser
from latentscope.errors import InputError
from latentscope.training import load_images, make_plan, train
from latentscope.training.loop import learning_rate_at
from latentscope.training.metrics import psnr, ssim

# 6 autoencoder epochs (60 steps): with the MSE loss, 4 were too few for a clear PSNR gain on these shapes
TINY = dict(size=16, width=8, epochs=6, denoiser_epochs=4, batch_size=4, learning_rate=3e-3, progress=False, patience=0)


def shapes_array(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([np.asarray(shape_image(rng, (16, 16))) for _ in range(n)])


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "model"
    result = train(shapes_array(48), out, **TINY)
    return out, result


def _weights(folder, part):
    from safetensors.torch import load_file

    return load_file(str(next((folder / part).glob("*.safetensors"))))


def test_losses_fall_and_validation_improves(tiny_model):
    out, result = tiny_model
    record = json.loads((out / "training.json").read_text())
    ae, dn = record["autoencoder"]["history"], record["denoiser"]["history"]
    assert len(ae) == 6 and len(dn) == 4
    assert ae[-1]["train_loss"] < 0.95 * ae[0]["train_loss"]
    assert ae[-1]["psnr"] > ae[0]["psnr"]
    assert min(h["train_loss"] for h in dn[1:]) < dn[0]["train_loss"]
    assert dn[-1]["val_loss"] < 0.97 * dn[0]["val_loss"]
    assert result.psnr == pytest.approx(record["autoencoder"]["metrics"]["psnr"])


def test_output_folder_layout_and_card(tiny_model):
    out, result = tiny_model
    for part in ("vae", "unet", "scheduler"):
        assert (out / part / "config.json").is_file() or (out / part / "scheduler_config.json").is_file()
    assert list((out / "vae").glob("*.safetensors")) and list((out / "unet").glob("*.safetensors"))
    assert not (out / "checkpoints").exists()
    mask = os.umask(0o022)
    os.umask(mask)
    modes = {f.relative_to(out): f.stat().st_mode & 0o777 for f in out.rglob("*") if f.is_file()}
    assert set(modes.values()) == {0o666 & ~mask}, modes  # others may read a shared model, as with any new file
    card = (out / "README.md").read_text()
    train_count = result.record["data"]["train"]
    assert "## Command" in card and f"{result.psnr:.2f} dB" in card and f"{train_count} images of 16x16" in card
    ae = result.record["autoencoder"]
    assert ae["warm_start_steps"] == round(0.25 * ae["steps"]) > 0  # a quarter of the 60 steps
    assert f"warm start: the first {ae['warm_start_steps']} steps fit each half to a linear block code" in card


def test_saved_model_loads_through_model_option(tiny_model, tmp_path):
    out, _ = tiny_model
    codec = Codec.from_pretrained(str(out), device="cpu")
    denoiser = Denoiser.from_pretrained(str(out), device="cpu")
    assert codec.latent_shape((16, 16)) == (4, 4, 4) and codec.image_size == (16, 16)
    latents = codec.encode_pixels(shapes_array(32, seed=1))
    # the calibrated scaling gives the SD convention: roughly zero mean, unit variance
    assert abs(float(latents.mean())) < 0.3 and 0.6 < float(latents.std()) < 1.6
    assert denoiser.prediction_type == "v_prediction" and denoiser.num_train_timesteps == 1000
    images = make_image_folder(tmp_path / "imgs", 6)
    assert main(["-q", "encode", str(images), "--model", str(out), "--out", str(tmp_path / "scope")]) == 0
    assert np.load(tmp_path / "scope" / "latents.npy").shape == (6, 4, 4, 4)


def test_recorded_psnr_matches_codec_round_trip(tiny_model):
    out, _ = tiny_model
    record = json.loads((out / "training.json").read_text())
    pixels = shapes_array(48)
    val = pixels[[int(name) for name in record["data"]["validation_names"]]]
    codec = Codec.from_pretrained(str(out), device="cpu")
    recon = codec.decode_to_pixels(codec.encode_pixels(val))
    to_t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float()  # noqa: E731
    assert float(psnr(to_t(val), to_t(recon)).mean()) == pytest.approx(record["autoencoder"]["metrics"]["psnr"], abs=0.05)


def _interrupt_at(phase_name: str, step: int):
    def callback(phase, current):
        if phase == phase_name and current == step:
            raise KeyboardInterrupt

    return callback


@pytest.mark.parametrize("phase,step", [("autoencoder", 13), ("denoiser", 30)])
def test_resume_after_interruption_gives_the_same_model(tiny_model, tmp_path, phase, step):
    reference, _ = tiny_model
    out = tmp_path / "model"
    with pytest.raises(KeyboardInterrupt):
        train(shapes_array(48), out, callback=_interrupt_at(phase, step), **TINY)
    assert (out / "checkpoints" / f"{phase}.safetensors").exists()
    state = json.loads((out / "checkpoints" / f"{phase}.json").read_text())
    assert state["step"] == step
    (out / ".README.md.k1ll3d.tmp").write_text("# half a model card")  # as a run killed inside an atomic write leaves it
    train(shapes_array(48), out, **TINY)
    assert not list(out.glob(".*.tmp"))
    for part in ("vae", "unet"):
        expected, got = _weights(reference, part), _weights(out, part)
        assert expected.keys() == got.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6, msg=f"{part}/{key}")


def test_checkpoint_of_other_settings_is_not_resumed(tmp_path):
    out = tmp_path / "model"
    with pytest.raises(KeyboardInterrupt):
        train(shapes_array(24), out, callback=_interrupt_at("autoencoder", 2), **{**TINY, "epochs": 2, "denoiser_epochs": 1})
    result = train(shapes_array(24), out, **{**TINY, "epochs": 2, "denoiser_epochs": 1, "learning_rate": 1e-3})
    assert result.record["autoencoder"]["steps"] == 10  # started over: 2 epochs x 5 full batches of 4 (22 train images)


def test_refuses_to_overwrite_a_trained_model(tiny_model):
    out, result = tiny_model
    before = _weights(out, "vae")
    with pytest.raises(InputError, match="already holds a model trained with other data or settings"):
        train(shapes_array(48), out, **{**TINY, "learning_rate": 1e-3})
    again = train(shapes_array(48), out, **TINY)  # the same run again: nothing to do, the stored result
    assert again.psnr == result.psnr and again.seconds == result.seconds and again.record["identity"] == result.record["identity"]
    assert all(torch.equal(before[k], v) for k, v in _weights(out, "vae").items())


def test_plan_chooses_sizes_from_image_size_and_count():
    small = make_plan((32, 32), 1600)
    assert small.latent_shape == (4, 8, 8) and small.widths == (16, 32, 64)
    large = make_plan((64, 64), 1600)
    assert large.latent_shape == (4, 16, 16) and large.epochs < small.epochs
    assert make_plan((32, 32), 100).epochs > small.epochs
    assert make_plan((128, 128), 100).downscale == 8
    with pytest.raises(InputError):
        make_plan((36, 36), 100, downscale=8)


def test_plan_splits_the_autoencoder_time_between_half_and_full_size():
    from latentscope.training.plan import AE_IMAGES_SEEN, COARSE_SHARE, relative_cost

    plan = make_plan((64, 64), 1600)
    assert plan.coarse_size == (32, 32) and plan.coarse_epochs > plan.epochs > 0  # half-size images cost less
    coarse_seconds = 1600 * plan.coarse_epochs * relative_cost(32, 16)
    seconds = coarse_seconds + 1600 * plan.epochs * relative_cost(64, 16)
    assert coarse_seconds / seconds == pytest.approx(COARSE_SHARE, abs=0.1)
    full_size_only = make_plan((64, 64), 1600, coarse_epochs=0)
    assert seconds == pytest.approx(1600 * full_size_only.epochs * relative_cost(64, 16), rel=0.15)  # the same time
    assert full_size_only.epochs * 1600 == pytest.approx(AE_IMAGES_SEEN / relative_cost(64, 16), rel=0.15)
    assert make_plan((64, 64), 1600, epochs=5).coarse_epochs == 0  # explicit epochs: full size only
    assert make_plan((32, 32), 1600).coarse_epochs == 0  # the plan halves only images of 64 px and more
    assert make_plan((32, 32), 1600, epochs=5, coarse_epochs=2).coarse_epochs == 2  # asked for: from 32 px
    with pytest.raises(InputError, match="coarse epochs 2: image size 16x16"):
        make_plan((16, 16), 100, coarse_epochs=2)


def test_plan_gives_the_denoiser_the_same_time_at_every_image_size():
    from latentscope.training.plan import DENOISER_LATENTS_SEEN, denoiser_relative_cost

    def seconds_worth(size, count=400):  # in 4 x 8 x 8 latents at width 16 (the plan at 32 px)
        plan = make_plan((size, size), count)
        positions = plan.latent_shape[1] * plan.latent_shape[2]
        return plan.denoiser_epochs * 2 * count * denoiser_relative_cost(positions, plan.denoiser_widths[0] // 2)

    for size in (32, 64, 128):
        assert seconds_worth(size) == pytest.approx(DENOISER_LATENTS_SEEN, rel=0.1), size
    assert make_plan((64, 64), 400).denoiser_epochs < make_plan((32, 32), 400).denoiser_epochs / 3
    assert denoiser_relative_cost(16 * 16, 24) == pytest.approx(11.1 / 2.44, rel=0.05)  # measured at 64 px
    assert make_plan((64, 64), 400, denoiser_epochs=9).denoiser_epochs == 9


COARSE = dict(size=32, width=8, epochs=2, coarse_epochs=3, batch_size=4, learning_rate=3e-3, progress=False, patience=0,
              denoiser=False)


def shapes_array_32(n: int) -> np.ndarray:
    rng = np.random.default_rng(3)
    return np.stack([np.asarray(shape_image(rng, (32, 32))) for _ in range(n)])


def test_half_size_stage_comes_first_and_resumes_to_the_same_model(tmp_path):
    reference = train(shapes_array_32(24), tmp_path / "reference", **COARSE)
    ae = reference.record["autoencoder"]
    assert ae["coarse"]["epochs_run"] == 3 and len(ae["history"]) == 2
    assert ae["seconds"] > ae["coarse"]["seconds"] > 0
    assert ae["coarse"]["warm_start_steps"] == round(0.25 * ae["coarse"]["steps"])
    card = (tmp_path / "reference" / "README.md").read_text()
    assert "3 epochs at 16 x 16 (halved images), then 2 epochs" in card
    assert f"warm start: the first {ae['coarse']['warm_start_steps']} steps of the halved images fit each half" in card
    # a hard kill after the half-size stage (no full-size checkpoint yet) and a Ctrl-C inside it both resume exactly
    killed, interrupted = tmp_path / "killed", tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        train(shapes_array_32(24), killed, callback=_interrupt_at("autoencoder", 2), **COARSE)
    (killed / "checkpoints" / "autoencoder.safetensors").unlink()
    with pytest.raises(KeyboardInterrupt):
        train(shapes_array_32(24), interrupted, callback=_interrupt_at("autoencoder-coarse", 7), **COARSE)
    assert json.loads((interrupted / "checkpoints" / "autoencoder-coarse.json").read_text())["step"] == 7
    expected = _weights(tmp_path / "reference", "vae")
    for out in (killed, interrupted):
        train(shapes_array_32(24), out, **COARSE)
        got = _weights(out, "vae")
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6, msg=f"{out.name}: {key}")


def test_block_pca_is_the_best_linear_code_of_the_latent_layout():
    from sklearn.decomposition import PCA

    from latentscope.training.autoencoder import BlockPCA, pixels_tensor, to_model_range

    pixels = pixels_tensor(shapes_array(12))
    images = to_model_range(pixels).contiguous()
    blocks = torch.nn.functional.unfold(images, 4, stride=4).transpose(1, 2).reshape(-1, 48).numpy()
    expected_blocks = PCA(4).fit(blocks).inverse_transform(PCA(4).fit(blocks).transform(blocks))
    code = BlockPCA.fit(pixels, factor=4, channels=4)
    latents = code.encode(images)
    assert latents.shape == (12, 4, 4, 4)
    got_blocks = torch.nn.functional.unfold(code.decode(latents), 4, stride=4).transpose(1, 2).reshape(-1, 48).numpy()
    np.testing.assert_allclose(got_blocks, expected_blocks, atol=1e-4)
    wide = BlockPCA.fit(pixels, factor=2, channels=16)  # more channels than a 2 x 2 block has values: lossless
    torch.testing.assert_close(wide.decode(wide.encode(images)), images, atol=1e-4, rtol=0)
    assert torch.count_nonzero(wide.weight[12:]) == 0


def test_first_steps_fit_each_half_to_the_linear_code_then_both_jointly():
    import torch.nn.functional as F

    from latentscope.training import autoencoder as ae

    plan = make_plan((16, 16), 8, width=8)
    vae = ae.build_autoencoder(plan)
    pixels = ae.pixels_tensor(shapes_array(8))
    code = ae.BlockPCA.fit(pixels, plan.downscale, plan.latent_channels)
    step = ae.make_step(vae, pixels, anchor=code, anchor_steps=3)
    indices = torch.arange(4)

    def batch(seed):
        images = ae.random_flip(ae.to_model_range(pixels[indices]), torch.Generator().manual_seed(seed))
        posterior = vae.encode(images).latent_dist
        return images, posterior, ae.KL_WEIGHT * posterior.kl().mean() / posterior.mean[0].numel()

    with torch.no_grad():
        images, posterior, kl = batch(1)
        anchored = F.mse_loss(code.decode(posterior.mean), images) + F.mse_loss(vae.decode(code.encode(images)).sample, images)
        torch.testing.assert_close(step(indices, torch.Generator().manual_seed(1), 2), anchored + kl)
        joint = step(indices, torch.Generator().manual_seed(1), 3)
        assert not torch.allclose(joint, anchored + kl)
        mean_only = F.mse_loss(vae.decode(posterior.mean).sample, images) + kl  # joint, with the (small) posterior noise
        assert float(joint) == pytest.approx(float(mean_only), rel=0.05)


def test_epochs_of_a_warm_start_never_stop_a_phase_early(tmp_path):
    from latentscope.training.loop import Phase

    model = torch.nn.Linear(2, 1)
    scores = iter([5.0, 4.0, 3.0, 2.0, 1.0, 0.5])  # worse every epoch

    def run(warm_start_steps):
        phase = Phase("toy", model, 8, lambda indices, generator, number: model(torch.ones(len(indices), 2)).pow(2).mean(),
                      lambda: {"score": next(scores)}, epochs=6, batch_size=4, learning_rate=1e-3, seed=0,
                      checkpoint=tmp_path / f"toy{warm_start_steps}.safetensors", identity={}, monitor="score", patience=1,
                      warm_start_steps=warm_start_steps, progress=False)
        return phase.run()

    assert run(0).epochs_run == 2  # the second epoch was worse: stop
    scores = iter([5.0, 4.0, 3.0, 2.0, 1.0, 0.5])
    result = run(6)  # the first 3 epochs (2 steps each) are the warm start
    assert result.epochs_run == 4 and result.stopped_early and result.warm_start_steps == 6


def test_load_images_from_folder_skips_bad_files(tmp_path):
    folder = make_image_folder(tmp_path / "imgs", 8)
    (folder / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    data = load_images(folder, 16, progress=False)
    assert data.pixels.shape == (8, 16, 16, 3) and data.skipped == 1
    with pytest.raises(InputError, match="at least"):
        load_images(shapes_array(2), progress=False)


def test_learning_rate_schedule_warms_up_and_decays():
    values = [learning_rate_at(s, 100, 1e-3) for s in range(100)]
    assert values[0] < values[4] == pytest.approx(1e-3) and values[-1] < 0.05e-3
    assert max(values) <= 1e-3 + 1e-12


def test_metrics_agree_with_definitions():
    a = torch.randint(0, 256, (3, 3, 16, 16)).float()
    assert torch.all(psnr(a, a) == 100.0)
    noisy = (a + 8).clamp(0, 255)
    expected = 10 * torch.log10(255**2 / (noisy - a).pow(2).flatten(1).mean(1))
    torch.testing.assert_close(psnr(a, noisy), expected)
    assert torch.allclose(ssim(a, a), torch.ones(3)) and torch.all(ssim(a, noisy) < 1)


def _cli(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.err.strip()


def test_cli_errors_are_one_line_with_exit_2(tmp_path, capsys, tiny_model):
    code, err = _cli(capsys, "train", str(tmp_path / "missing"), "--out", str(tmp_path / "m"))
    assert code == 2 and len(err.splitlines()) == 1 and "no such folder" in err
    images = make_image_folder(tmp_path / "imgs", 6)
    code, err = _cli(capsys, "train", str(images), "--out", str(tmp_path / "m"), "--val-fraction", "1.5")
    assert code == 2 and len(err.splitlines()) == 1 and "validation fraction" in err
    code, err = _cli(capsys, "-q", "train", str(images), "--out", str(tiny_model[0]))  # refused after loading the images
    assert code == 2 and len(err.splitlines()) == 1 and "--overwrite" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(images), "--out", str(tmp_path / "m"), "--downscale", "3"])
    assert exit_info.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_cli_trains_and_records_the_command(tmp_path, capsys):
    images = make_image_folder(tmp_path / "imgs", 12)
    out = tmp_path / "model"
    code = main(["-q", "train", str(images), "--out", str(out), "--size", "16", "--width", "8", "--epochs", "1",
                 "--denoiser-epochs", "1", "--batch-size", "4", "--no-denoiser"])
    assert code == 0
    assert "validation PSNR" in capsys.readouterr().out
    card = (out / "README.md").read_text()
    assert f"latentscope -q train {images} --out {out}" in card
    assert not (out / "unet").exists() and Codec.from_pretrained(str(out)).image_size == (16, 16)

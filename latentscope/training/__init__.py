"""``latentscope train``: fit a compact latent diffusion model on a user's images.

Phase 1 fits a diffusers ``AutoencoderKL`` (reconstruction + tiny KL loss),
then sets its ``scaling_factor`` / ``shift_factor`` so scaled latents have zero
mean and unit variance. Phase 2 fits a ``UNet2DModel`` denoiser (EMA weights)
on those scaled latents. The output folder is a latentscope model folder that
``--model`` accepts everywhere::

    MODEL_DIR/vae/        AutoencoderKL (config.json + safetensors)
    MODEL_DIR/unet/       UNet2DModel
    MODEL_DIR/scheduler/  DDPMScheduler config
    MODEL_DIR/README.md   model card: command, data, metrics, time
    MODEL_DIR/training.json  settings, validation split, per-epoch history

Interrupted runs resume from ``MODEL_DIR/checkpoints/`` when rerun with the
same images and settings.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .. import __version__
from ..errors import InputError
from ..fileio import atomic_path, read_json, remove_unfinished_writes, save_pretrained, write_json
from ..runtime import resolve_device, seed_everything
from . import autoencoder as ae_phase
from . import diffusion as dn_phase
from .card import write_card
from .data import TrainingImages, load_images, split_validation
from .loop import Phase, PhaseResult
from .plan import Plan, make_plan

log = logging.getLogger(__name__)

__all__ = ["train", "TrainResult", "make_plan", "load_images", "anchored_step"]

RECORD_FILE = "training.json"
CHECKPOINT_DIR = "checkpoints"
REMOVED_CHECKPOINTS = ".checkpoints.removed"
RECIPE_VERSION = 6  # bumped when the training recipe changes: checkpoints of other recipes are not resumed


@dataclass
class TrainResult:
    """What a training run produced."""

    out: Path
    psnr: float
    ssim: float
    denoiser_loss: float | None
    seconds: float
    record: dict

    def lines(self) -> list[str]:
        data, ae = self.record["data"], self.record["autoencoder"]
        out = [
            f"model: {self.out}",
            f"trained on {data['train']} images of {data['size'][0]}x{data['size'][1]} ({data['validation']} held out), "
            f"latent {' x '.join(map(str, self.record['plan']['latent_shape']))}",
            f"autoencoder: {ae['epochs_run']} epochs, validation PSNR {self.psnr:.2f} dB, SSIM {self.ssim:.4f}",
        ]
        if self.denoiser_loss is not None:
            out.append(f"denoiser: {self.record['denoiser']['epochs_run']} epochs, validation loss {self.denoiser_loss:.4f}")
        out.append(f"time {self.seconds / 60:.1f} min; model card {self.out / 'README.md'}")
        return out


def train(
    images,
    out: str | os.PathLike,
    *,
    size: int | tuple[int, int] | None = None,
    resize: str = "center-crop",
    background="white",
    latent_channels: int = 4,
    downscale: int | None = None,
    width: int | None = None,
    epochs: int | None = None,
    coarse_epochs: int | None = None,
    denoiser_epochs: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    patience: int = 8,
    denoiser: bool = True,
    device: str = "auto",
    overwrite: bool = False,
    checkpoint_seconds: float = 60.0,
    progress: bool = True,
    command: str | None = None,
    name: str | None = None,
    callback: Callable[[str, int], None] | None = None,
) -> TrainResult:
    """Train an autoencoder (and a denoiser) on ``images`` and save them as a model folder ``out``.

    ``images``: a folder (searched recursively), a list of files, or an array
    N x H x W [x C]. Unset sizes and lengths are chosen from the image size and
    count (see :func:`make_plan`). Rerunning after an interruption resumes.
    ``callback(phase, step)`` is called after every optimizer step.
    """
    from ..ingest import parse_background

    started = time.perf_counter()
    out = Path(out).expanduser().resolve()
    _check_options(val_fraction, patience, seed)
    _check_out(out)
    device = resolve_device(device)
    data = load_images(images, size, resize, parse_background(background), progress)
    train_idx, val_idx = split_validation(len(data.pixels), val_fraction, seed)
    plan = make_plan(data.size, len(train_idx), latent_channels, downscale, epochs, batch_size, learning_rate,
                     denoiser_epochs, width, coarse_epochs)
    identity = {"data": data.fingerprint(), "plan": dataclasses.asdict(plan), "seed": seed, "val_fraction": val_fraction,
                "patience": patience, "kl_weight": ae_phase.KL_WEIGHT, "recipe": RECIPE_VERSION, "device": device.type}
    checkpoints = out / CHECKPOINT_DIR
    stored = _trained_before(out, {**identity, "denoiser": bool(denoiser)}, overwrite)
    if stored is not None:
        log.info("%s: already trained from these images with these settings; nothing to do", out)
        return _result_from_record(out, stored)
    checkpoints.mkdir(parents=True, exist_ok=True)
    log.info("training on %d images (%d validation), plan %s", len(train_idx), len(val_idx), plan)

    pixels = ae_phase.pixels_tensor(data.pixels)
    train_pixels, val_pixels = pixels[torch.from_numpy(train_idx)], pixels[torch.from_numpy(val_idx)]
    vae, ae_result = _autoencoder_phase(plan, train_pixels, val_pixels, identity, checkpoints, device, seed, patience,
                                        checkpoint_seconds, progress, callback, out)
    ae_metrics = ae_phase.evaluate(vae, val_pixels.to(device))

    dn_record = None
    if denoiser:
        dn_record = _denoiser_phase(plan, vae, train_pixels, val_pixels, identity, checkpoints, device, seed, patience,
                                    checkpoint_seconds, progress, callback, out)

    record = _record(out, name, command, data, train_idx, val_idx, plan, seed, vae, ae_result, ae_metrics, dn_record, device)
    record["identity"] = _jsonable({**identity, "denoiser": bool(denoiser)})
    # an interrupted and resumed run counts the phase time of its earlier runs too
    phase_seconds = ae_result.seconds + (dn_record["seconds"] if dn_record else 0.0)
    record["seconds"] = round(max(time.perf_counter() - started, phase_seconds), 2)
    write_card(out / "README.md", record)
    write_json(out / RECORD_FILE, record)
    _remove_checkpoints(out)
    return _result_from_record(out, record)


def _result_from_record(out: Path, record: dict) -> TrainResult:
    metrics, denoiser = record["autoencoder"]["metrics"], record.get("denoiser")
    return TrainResult(out, metrics["psnr"], metrics["ssim"], denoiser["metrics"]["val_loss"] if denoiser else None,
                       record["seconds"], record)


def _check_options(val_fraction: float, patience: int, seed: int) -> None:
    """Fail before any work is done."""
    if not 0.0 < val_fraction < 1.0:
        raise InputError(f"validation fraction {val_fraction}: must be between 0 and 1")
    if patience < 0:
        raise InputError(f"patience {patience}: must be 0 (never stop early) or more")
    if seed < 0:
        raise InputError(f"seed {seed}: must be 0 or more")


MODEL_PARTS = ("vae", "unet", "scheduler", CHECKPOINT_DIR, REMOVED_CHECKPOINTS, RECORD_FILE, "README.md")


def _check_out(out: Path) -> None:
    """Refuse an --out that is a file, a scope, or a folder of other things (before any work is done)."""
    from ..scope import Scope

    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: is a file; give a folder for the model")
    if Scope.exists(out):
        raise InputError(f"--out {out}: is a scope folder; give a folder for the model")
    if out.is_dir() and any(out.iterdir()) and not any((out / part).exists() for part in MODEL_PARTS):
        raise InputError(f"--out {out}: folder is not empty and holds no latentscope model; give a new or empty folder")


def _trained_before(out: Path, identity: dict, overwrite: bool) -> dict | None:
    """The record of a model already trained in ``out`` from the same data and settings, if complete.

    A model trained with other settings is refused unless ``overwrite`` (then it
    is removed, its record first, so a crash midway leaves no half model that
    looks finished). A run stopped after its record was written, before it
    removed its checkpoints, is finished by the caller.
    """
    shutil.rmtree(out / REMOVED_CHECKPOINTS, ignore_errors=True)
    remove_unfinished_writes(out)  # the model card or record of a run killed before it committed them
    record_path = out / RECORD_FILE
    if not record_path.exists():
        return None
    try:
        record = read_json(record_path)
    except (OSError, ValueError):
        record = {}
    if record.get("identity") == _jsonable(identity):
        return None if (out / CHECKPOINT_DIR).is_dir() else record
    if not overwrite:
        raise InputError(f"--out {out}: already holds a model trained with other data or settings; give another "
                         "folder or --overwrite")
    record_path.unlink()
    for part in (out / name for name in MODEL_PARTS):
        shutil.rmtree(part, ignore_errors=True) if part.is_dir() else part.unlink(missing_ok=True)
    return None


def _remove_checkpoints(out: Path) -> None:
    """Remove the checkpoints in one rename (a crash never leaves half of them), then delete them."""
    if (out / CHECKPOINT_DIR).exists():
        os.replace(out / CHECKPOINT_DIR, out / REMOVED_CHECKPOINTS)
    shutil.rmtree(out / REMOVED_CHECKPOINTS, ignore_errors=True)


def _phase_done(checkpoints: Path, phase: str, identity: dict, output: Path) -> dict | None:
    """The done marker of ``phase`` when it belongs to this run and the phase's ``output`` file exists."""
    marker = checkpoints / f"{phase}.done.json"
    if marker.exists() and output.exists():
        stored = read_json(marker)
        if stored.get("identity") == _jsonable(identity):
            return stored
    return None


def _jsonable(value):
    import json

    return json.loads(json.dumps(value, default=list))


def _autoencoder_phase(plan: Plan, train_pixels, val_pixels, identity, checkpoints, device, seed, patience,
                       checkpoint_seconds, progress, callback, out: Path):
    from diffusers import AutoencoderKL

    done = _phase_done(checkpoints, "autoencoder", identity, out / "vae" / "config.json")
    if done:
        log.info("autoencoder: already trained by an earlier run; loading %s", out / "vae")
        vae = AutoencoderKL.from_pretrained(out / "vae", use_safetensors=True).to(device).eval()
        return vae, PhaseResult(**done["result"])
    seed_everything(seed)
    vae = ae_phase.build_autoencoder(plan).to(device)
    options = dict(batch_size=plan.batch_size, seed=seed, identity=identity, monitor="psnr", mode="max",
                   patience=patience, checkpoint_seconds=checkpoint_seconds, progress=progress, callback=callback)
    coarse = _coarse_stage(plan, vae, train_pixels, val_pixels, checkpoints, device, options)
    val_device = val_pixels.to(device)
    if coarse:  # the half-size stage was the warm start
        step, warm_start = ae_phase.make_step(vae, train_pixels, device=device), 0
    else:
        step, warm_start = anchored_step(plan, vae, train_pixels, plan.epochs, device)
    phase = Phase(
        "autoencoder", vae, len(train_pixels), step, lambda: ae_phase.evaluate(vae, val_device), epochs=plan.epochs,
        learning_rate=plan.learning_rate * (ae_phase.FINE_AFTER_COARSE_LR if coarse else 1.0),
        checkpoint=checkpoints / "autoencoder.safetensors", warm_start_steps=warm_start, **options,
    )
    result = phase.run()
    phase.restore_best()
    if coarse:
        result = dataclasses.replace(result, seconds=result.seconds + coarse.seconds, examples=result.examples + coarse.examples,
                                     train_seconds=result.train_seconds + coarse.train_seconds, coarse=dataclasses.asdict(coarse))
    means = ae_phase.encode_means(vae, train_pixels.to(device))
    ae_phase.calibrate_scaling(vae, means)
    save_pretrained(vae, out / "vae")
    write_json(checkpoints / "autoencoder.done.json", {"identity": identity, "result": dataclasses.asdict(result)})
    return vae, result


def _coarse_stage(plan: Plan, vae, train_pixels, val_pixels, checkpoints: Path, device, options: dict) -> PhaseResult | None:
    """Train ``vae`` on the images halved in size first (``plan.coarse_epochs``; see ``plan.py``), resumably."""
    if not plan.coarse_epochs:
        return None
    from safetensors.torch import load_file, save_file

    weights = checkpoints / "autoencoder-coarse.done.safetensors"
    done = _phase_done(checkpoints, "autoencoder-coarse", options["identity"], weights)
    if done:
        vae.load_state_dict(load_file(str(weights)))
        return PhaseResult(**done["result"])
    small_train, small_val = ae_phase.halve(train_pixels), ae_phase.halve(val_pixels).to(device)
    step, warm_start = anchored_step(plan, vae, small_train, plan.coarse_epochs, device)
    phase = Phase(
        "autoencoder-coarse", vae, len(small_train), step, lambda: ae_phase.evaluate(vae, small_val),
        epochs=plan.coarse_epochs, learning_rate=plan.learning_rate,
        checkpoint=checkpoints / "autoencoder-coarse.safetensors", warm_start_steps=warm_start, **options,
    )
    result = phase.run()
    phase.restore_best()
    with atomic_path(weights) as tmp:
        save_file({k: v.detach().contiguous() for k, v in vae.state_dict().items()}, str(tmp))
    write_json(checkpoints / "autoencoder-coarse.done.json", {"identity": options["identity"], "result": dataclasses.asdict(result)})
    return result


def anchored_step(plan: Plan, vae, pixels: torch.Tensor, epochs: int, device):
    """The step function of the autoencoder's first stage, whose first ``ANCHOR_SHARE`` of steps train
    each half against the best linear code of ``pixels`` (see ``autoencoder.make_step``), and that count."""
    batches = len(pixels) // min(plan.batch_size, len(pixels))
    anchor_steps = int(round(ae_phase.ANCHOR_SHARE * batches * epochs))
    anchor = ae_phase.BlockPCA.fit(pixels, plan.downscale, plan.latent_channels)
    return ae_phase.make_step(vae, pixels, device=device, anchor=anchor, anchor_steps=anchor_steps), anchor_steps


def _denoiser_phase(plan: Plan, vae, train_pixels, val_pixels, identity, checkpoints, device, seed, patience,
                    checkpoint_seconds, progress, callback, out: Path) -> dict:
    from diffusers import UNet2DModel

    done = _phase_done(checkpoints, "denoiser", identity, out / "unet" / "config.json")
    if done:
        return done["record"]
    scheduler = dn_phase.build_scheduler()
    scale, shift = vae.config.scaling_factor, vae.config.shift_factor
    # the denoiser sees each training image and its mirror image (the autoencoder's flip augmentation, in latent space)
    train_latents = torch.cat([ae_phase.encode_means(vae, train_pixels.to(device), flip=f) for f in (False, True)])
    train_latents = ((train_latents - shift) * scale).cpu()
    val_latents = ((ae_phase.encode_means(vae, val_pixels.to(device)) - shift) * scale).cpu()
    seed_everything(seed + 1)
    unet = dn_phase.build_unet(plan.latent_shape, plan.denoiser_widths).to(device)
    loss = dn_phase.DiffusionLoss(unet, scheduler, device)
    phase = Phase(
        "denoiser", unet, len(train_latents), dn_phase.make_step(loss, train_latents),
        dn_phase.make_validation(loss, val_latents, seed),
        epochs=plan.denoiser_epochs, batch_size=plan.denoiser_batch_size, learning_rate=plan.denoiser_learning_rate,
        seed=seed, checkpoint=checkpoints / "denoiser.safetensors", identity=identity, monitor="val_loss", mode="min",
        patience=patience, ema_decay=0.999, checkpoint_seconds=checkpoint_seconds, progress=progress, callback=callback,
    )
    result = phase.run()
    phase.restore_best()
    save_pretrained(unet, out / "unet")
    scheduler.save_pretrained(out / "scheduler")
    record = {**dataclasses.asdict(result), "metrics": {"val_loss": phase.best["value"] if phase.best else float("nan")},
              "parameters": sum(p.numel() for p in unet.parameters())}
    write_json(checkpoints / "denoiser.done.json", {"identity": identity, "record": record})
    return record


def _reference(out: Path) -> str:
    """How ``--model`` names the folder: ``builtin:<name>`` for a model inside the package."""
    from ..codec import BUILTIN_PREFIX, BUILTIN_ROOT

    return BUILTIN_PREFIX + out.name if out.parent == BUILTIN_ROOT.resolve() else str(out)


def _record(out, name, command, data: TrainingImages, train_idx, val_idx, plan: Plan, seed, vae, ae_result: PhaseResult,
            ae_metrics: dict, dn_record: dict | None, device) -> dict:
    import diffusers

    return {
        "name": name or out.name,
        "model_reference": _reference(out),
        "command": command or f"latentscope.train({data.source!r}, {str(out)!r}, seed={seed})",
        "data": {"source": data.source, "images": len(data.pixels), "skipped": data.skipped, "train": len(train_idx),
                 "validation": len(val_idx), "size": list(data.size), "fingerprint": data.fingerprint(),
                 "validation_names": [data.names[i] for i in val_idx]},
        "plan": {**dataclasses.asdict(plan), "latent_shape": list(plan.latent_shape)},
        "seed": seed,
        "kl_weight": ae_phase.KL_WEIGHT,
        "loss": ae_phase.LOSS_NAME,
        "autoencoder": {**dataclasses.asdict(ae_result), "metrics": ae_metrics,
                        "parameters": sum(p.numel() for p in vae.parameters()),
                        "scaling_factor": vae.config.scaling_factor, "shift_factor": vae.config.shift_factor},
        "denoiser": dn_record,
        "environment": {"device": str(device), "threads": torch.get_num_threads(), "latentscope": __version__,
                        "torch": torch.__version__, "diffusers": diffusers.__version__},
    }

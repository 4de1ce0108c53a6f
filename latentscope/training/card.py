"""The model card (README.md) written beside the weights, from the training record."""

from __future__ import annotations

from ..fileio import write_bytes


def _fmt_seconds(seconds: float) -> str:
    return f"{seconds:.0f} s ({seconds / 60:.1f} min)"


def render_card(record: dict) -> str:
    data, plan, ae, dn = record["data"], record["plan"], record["autoencoder"], record.get("denoiser")
    lines = [
        f"# {record['name']}: a compact latent diffusion model trained by latentscope",
        "",
        f"An `AutoencoderKL` ({ae['parameters'] / 1e6:.2f} M parameters) "
        + (f"and a `UNet2DModel` denoiser ({dn['parameters'] / 1e6:.2f} M parameters, EMA weights) " if dn else "")
        + f"trained on {data['train']} images of {data['size'][0]}x{data['size'][1]} pixels "
        f"({data['validation']} more held out for validation) from `{data['source']}`.",
        "",
        "## Command",
        "",
        "```bash",
        record["command"],
        "```",
        "",
        "## Use",
        "",
        "```bash",
        f"latentscope encode IMAGES --model {record['model_reference']} --out IMAGES.scope",
        "```",
        "",
        "`vae/` holds the autoencoder (diffusers `AutoencoderKL`; `scaling_factor` and `shift_factor` in its config give",
        "scaled latents zero mean and unit variance), `unet/` the denoiser and `scheduler/` its noise schedule.",
        "`training.json` holds every setting, the validation split and the per-epoch history.",
        "",
        "## Model",
        "",
        "| part | setting |",
        "|---|---|",
        f"| image size | {data['size'][0]} x {data['size'][1]} |",
        f"| latent shape | {' x '.join(str(v) for v in plan['latent_shape'])} (downscale {plan['downscale']}) |",
        f"| autoencoder widths | {', '.join(str(w) for w in plan['widths'])} |",
        f"| autoencoder training | {_coarse_text(ae, data)}{ae['epochs_run']} epochs (best {ae['best_epoch']}), batch {plan['batch_size']}, peak lr {plan['learning_rate']:g}, {record.get('loss', 'L1 + MSE')} + {record['kl_weight']:g} KL{_warm_start_text(ae)} |",
    ]
    if dn:
        lines += [
            f"| denoiser widths | {', '.join(str(w) for w in plan['denoiser_widths'])} |",
            f"| denoiser training | {dn['epochs_run']} epochs (best {dn['best_epoch']}), batch {plan['denoiser_batch_size']}, "
            f"peak lr {plan['denoiser_learning_rate']:g}, cosine schedule, v-prediction, EMA |",
        ]
    lines += [
        f"| seed | {record['seed']} |",
        "",
        "## Metrics (validation images, never trained on)",
        "",
        "| metric | value |",
        "|---|---|",
        f"| reconstruction PSNR | {ae['metrics']['psnr']:.2f} dB |",
        f"| reconstruction SSIM | {ae['metrics']['ssim']:.4f} |",
    ]
    if dn:
        lines.append(f"| denoiser validation loss (v-prediction, min-SNR weighted) | {dn['metrics']['val_loss']:.4f} |")
    lines += [
        "",
        "## Time",
        "",
        "| phase | time |",
        "|---|---|",
        f"| autoencoder | {_fmt_seconds(ae['seconds'])} |",
    ]
    if dn:
        lines.append(f"| denoiser | {_fmt_seconds(dn['seconds'])} |")
    lines += [
        f"| total (with loading and saving) | {_fmt_seconds(record['seconds'])} |",
        "",
        f"Device: {record['environment']['device']}, {record['environment']['threads']} threads; "
        f"latentscope {record['environment']['latentscope']}, torch {record['environment']['torch']}, "
        f"diffusers {record['environment']['diffusers']}.",
        "",
    ]
    return "\n".join(lines)


def write_card(path, record: dict) -> None:
    write_bytes(path, render_card(record).encode("utf-8"))


def _warm_start_text(ae: dict) -> str:
    steps = (ae.get("coarse") or ae).get("warm_start_steps", 0)
    where = " of the halved images" if ae.get("coarse") else ""
    return f"; warm start: the first {steps} steps{where} fit each half to a linear block code (PCA)" if steps else ""


def _coarse_text(ae: dict, data: dict) -> str:
    coarse = ae.get("coarse")
    if not coarse:
        return ""
    return f"{coarse['epochs_run']} epochs at {data['size'][0] // 2} x {data['size'][1] // 2} (halved images), then "

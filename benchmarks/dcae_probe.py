"""Probe (issue 3): a compact diffusers ``AutoencoderDC`` (DC-AE: pixel-shuffle up- and downsampling, residual
space-to-channel shortcuts, a deterministic encoder) trained from scratch on the colour split of
``bench_train.py --only colour`` (held out by source), 4 x h/4 x w/4 latents like the plan's ``AutoencoderKL``.
MSE, AdamW with a one-cycle schedule (peak 2e-3), batch 8, random flips; prints the held-out PSNR along the run
as JSON lines. ``latentscope train`` does not train this architecture; the probe measures whether it would pay.

    python benchmarks/dcae_probe.py --set photos --steps 7500 --width 16 --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_block_codes import as_uint8  # noqa: E402
from benchmarks.bench_train import mean_psnr, pca_psnr  # noqa: E402
from benchmarks.colour_sets import load_set, split_by_group  # noqa: E402
from latentscope.training.autoencoder import random_flip, to_model_range  # noqa: E402


def build(width: int, latent_channels: int = 4):
    from diffusers import AutoencoderDC

    widths = (width, 2 * width, 4 * width)
    return AutoencoderDC(latent_channels=latent_channels, encoder_block_out_channels=widths,
                         decoder_block_out_channels=widths, encoder_layers_per_block=(1, 1, 1),
                         decoder_layers_per_block=(1, 1, 1), encoder_qkv_multiscales=((), (), ()),
                         decoder_qkv_multiscales=((), (), ()))


@torch.no_grad()
def held_out_psnr(vae, test: torch.Tensor, test_images: np.ndarray) -> float:
    vae.eval()
    decoded = [vae.decode(vae.encode(test[i:i + 100]).latent).sample for i in range(0, len(test), 100)]
    vae.train()
    return mean_psnr(test_images, as_uint8(torch.cat(decoded)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", default="photos")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=7500)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--evals", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images, groups = load_set(args.set, args.size, 2000)
    train_idx, test_idx = split_by_group(groups, 0.2, seed=0)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    vae = build(args.width)
    optimiser = torch.optim.AdamW(vae.parameters(), 1e-3, betas=(0.9, 0.99), weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, 2e-3, total_steps=args.steps, pct_start=0.05)
    generator = torch.Generator().manual_seed(0)
    train = pixels[torch.from_numpy(train_idx)]
    test = to_model_range(pixels[torch.from_numpy(test_idx)])
    log, started = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        batch = random_flip(to_model_range(train[torch.randint(len(train), (8,), generator=generator)]), generator)
        loss = torch.nn.functional.mse_loss(vae.decode(vae.encode(batch).latent).sample, batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % max(1, args.steps // args.evals) == 0:
            log.append({"step": step, "psnr": round(held_out_psnr(vae, test, images[test_idx]), 2),
                        "minutes": round((time.perf_counter() - started) / 60, 1)})
            print(json.dumps(log[-1]), flush=True)
    code_size = 4 * (args.size // 4) ** 2
    print(json.dumps({"args": vars(args), "parameters": sum(p.numel() for p in vae.parameters()), "log": log,
                      "pca": round(pca_psnr(images[train_idx], images[test_idx], code_size), 2)}), flush=True)


if __name__ == "__main__":
    main()

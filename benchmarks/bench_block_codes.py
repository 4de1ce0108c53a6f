"""Linear codes of the autoencoder's latent layouts against PCA of the whole image (issue 3).

For each colour set and size (the split of ``bench_train.py --only colour``, held out by source), the held-out PSNR of

* PCA of the whole image with the code size of the 4 x h/4 x w/4 latent (the issue's baseline), and
* PCA of the pixel blocks of each layout with that code size (downscale 4, 8, 16: 4, 16, 64 values per block):
  the best linear code with that layout, which the autoencoder's warm start fits (``BlockPCA``);

and, with ``--decoder-steps N``, at 32 px, how close the autoencoder's decoder (the plan's architecture, trained
alone for N steps of 8 images on the fixed block codes) comes to rendering each layout's linear code. Written to
the "train-block-codes" section of RESULTS.md.

    python benchmarks/bench_block_codes.py [--sets photos icons] [--sizes 32 64] [--decoder-steps 8000]
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_train import mean_psnr, pca_psnr  # noqa: E402
from benchmarks.colour_sets import load_set, split_by_group  # noqa: E402
from benchmarks.results import command_line, machine_line, write_section  # noqa: E402
from latentscope.training.autoencoder import BlockPCA, build_autoencoder, to_model_range  # noqa: E402

LAYOUTS = {4: (4, (16, 32, 64)), 8: (16, (16, 32, 64, 64)), 16: (64, (16, 32, 64, 64, 64))}  # downscale: channels, widths


def as_uint8(model_range: torch.Tensor) -> np.ndarray:
    return ((model_range.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def block_code_psnr(anchor: BlockPCA, test: torch.Tensor, test_pixels: np.ndarray) -> float:
    with torch.no_grad():
        return mean_psnr(test_pixels, as_uint8(anchor.decode(anchor.encode(test))))


def decoder_on_block_code(anchor: BlockPCA, train: torch.Tensor, test: torch.Tensor, test_pixels: np.ndarray,
                          channels: int, widths: tuple, steps: int, size: int) -> dict:
    """Train the plan's decoder alone to render ``anchor``'s codes (MSE, one-cycle AdamW); held-out PSNR at the end."""
    torch.manual_seed(0)
    vae = build_autoencoder(types.SimpleNamespace(widths=widths, latent_channels=channels, size=(size, size)))
    optimiser = torch.optim.AdamW(vae.decoder.parameters(), 1e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, 2e-3, total_steps=steps, pct_start=0.05)
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    for _ in range(steps):
        images = to_model_range(train[torch.randint(len(train), (8,), generator=generator)])
        loss = torch.nn.functional.mse_loss(vae.decode(anchor.encode(images)).sample, images)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    with torch.no_grad():
        decoded = torch.cat([vae.decode(anchor.encode(test[i:i + 100])).sample for i in range(0, len(test), 100)])
    return {"psnr": mean_psnr(test_pixels, as_uint8(decoded)), "minutes": (time.perf_counter() - started) / 60}


def bench_set(name: str, size: int, decoder_steps: int) -> dict:
    images, groups = load_set(name, size, 2000)
    train_idx, test_idx = split_by_group(groups, 0.2, seed=0)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    test = to_model_range(pixels[test_idx])
    code_size = 4 * (size // 4) ** 2
    row = {"set": name, "size": size, "code_size": code_size,
           "pca": pca_psnr(images[train_idx], images[test_idx], min(code_size, len(train_idx))), "layouts": []}
    for factor, (channels, widths) in LAYOUTS.items():
        anchor = BlockPCA.fit(pixels[train_idx], factor, channels)
        layout = {"factor": factor, "channels": channels, "linear": block_code_psnr(anchor, test, images[test_idx])}
        if decoder_steps and size == 32 and factor <= 8:
            layout["decoder"] = decoder_on_block_code(anchor, pixels[train_idx], test, images[test_idx], channels,
                                                      widths, decoder_steps, size)
        row["layouts"].append(layout)
        print(name, size, layout, flush=True)
    return row


def render(rows: list[dict], decoder_steps: int) -> str:
    lines = ["### Linear codes of the latent layouts (issue 3)", "",
             f"Command: `{command_line()}`, {machine_line()}.", "",
             "Held-out PSNR (the colour table's split, held out by source) of PCA of the whole image with the code "
             "size of the 4 x h/4 x w/4 latent, and of PCA of each layout's pixel blocks with the same code size "
             "(the best linear code of that layout, which the warm start fits). In brackets: the plan's decoder "
             f"trained alone for {decoder_steps} steps of 8 images to render that block code.", "",
             "| set | code values | PCA of the image | 4 x 4 blocks, 4 values (4 x h/4 x w/4) "
             "| 8 x 8 blocks, 16 values (16 x h/8 x w/8) | 16 x 16 blocks, 64 values (64 x h/16 x w/16) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        cells = []
        for layout in r["layouts"]:
            decoder = layout.get("decoder")
            rendered = f" (decoder {decoder['psnr']:.2f} dB)" if decoder else ""
            cells.append(f"{layout['linear']:.2f} dB{rendered}")
        lines.append(f"| {r['set']} {r['size']}px | {r['code_size']} | {r['pca']:.2f} dB | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["photos", "icons"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--decoder-steps", type=int, default=8000)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = [bench_set(name, size, args.decoder_steps) for name in args.sets for size in args.sizes]
    write_section("train-block-codes", render(rows, args.decoder_steps))


if __name__ == "__main__":
    main()

"""Model sizes and training lengths chosen from the image size and the number of images.

The recipe (probes on held-out colour icons at 32 px, ``benchmarks/ae_recipe_probe.py``, figures in
``benchmarks/RESULTS.md``): an encoder and decoder of widths (16, 32, 64) with one ResNet block per
level and no attention (also at 64 px: within the same 10 minutes width 16 beat 24 there, 23.6 vs 23.1 dB),
downscale 4 to a 4-channel latent (4 x 8 x 8 for 32 px images), channels-last
convolutions, MSE reconstruction loss with a tiny KL weight, AdamW with warm-up and cosine decay to a
peak learning rate of 1e-3, horizontal flips, and small batches (8). Measured alternatives that did
worse: L1 + MSE (-1.1 dB mid-run, -0.2 dB after 800 steps), peak learning rate 2e-3 (-1.6 dB), halving the widths to (8, 16, 32)
(17.2 dB after 32,000 images, below the wider model after 3,200), and downscale 8 (4 levels from width 8,
16 or 4 latent channels: 1 dB below downscale 4 after 8,000 images).
Batch 8 beat batch 32 at equal compute (19.4 vs 15.5 dB). An EMA of the weights gave nothing at the
end of the cosine schedule. The denoiser is a small UNet over the scaled latents with a cosine noise
schedule and v-prediction.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError

AE_IMAGES_SEEN = 36_000  # autoencoder training length in images (about 10 minutes on 2 CPU cores at 32 px)
DENOISER_LATENTS_SEEN = 120_000  # denoiser training length in latents (about 5 minutes on 2 CPU cores)
MIN_EPOCHS, MAX_EPOCHS = 3, 500


@dataclass(frozen=True)
class Plan:
    """Everything ``latentscope train`` decides before it starts (each settable by an option)."""

    size: tuple[int, int]
    latent_channels: int
    downscale: int
    widths: tuple[int, ...]
    epochs: int
    batch_size: int
    learning_rate: float
    denoiser_widths: tuple[int, ...]
    denoiser_epochs: int
    denoiser_batch_size: int
    denoiser_learning_rate: float

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.latent_channels, self.size[0] // self.downscale, self.size[1] // self.downscale


def _epochs_for(examples_seen: int, count: int) -> int:
    return int(min(MAX_EPOCHS, max(MIN_EPOCHS, round(examples_seen / max(1, count)))))


LIMITS = {"epochs": 100_000, "denoiser_epochs": 100_000, "batch_size": 65_536, "width": 1024}


def _check_limits(**values) -> None:
    for name, value in values.items():
        if value is not None and not 1 <= value <= LIMITS[name]:
            raise InputError(f"{name.replace('_', ' ')} {value}: must be between 1 and {LIMITS[name]:,}")


def make_plan(
    size: tuple[int, int],
    train_count: int,
    latent_channels: int = 4,
    downscale: int | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    denoiser_epochs: int | None = None,
    width: int | None = None,
) -> Plan:
    _check_limits(epochs=epochs, denoiser_epochs=denoiser_epochs, batch_size=batch_size, width=width)
    if learning_rate is not None and not 0.0 < learning_rate <= 1.0:
        raise InputError(f"learning rate {learning_rate}: must be above 0 and at most 1")
    side = min(size)
    downscale = downscale or (4 if side <= 64 else 8)
    if downscale not in (2, 4, 8, 16):
        raise InputError(f"downscale {downscale}: choose 2, 4, 8 or 16")
    if size[0] % downscale or size[1] % downscale:
        raise InputError(f"image size {size[0]}x{size[1]} is not a multiple of the downscale factor {downscale}")
    if not 1 <= latent_channels <= 64:
        raise InputError(f"latent channels {latent_channels}: must be between 1 and 64")
    levels = downscale.bit_length()  # downscale 4 -> 3 resolution levels
    base = width or (16 if side <= 64 else 24)  # at 64 px width 16 ends higher than 24 within the same 10 minutes
    denoiser_base = width or (16 if side <= 32 else 24)
    if base % 8:
        raise InputError(f"width {base}: must be a multiple of 8 (the group-norm group count)")
    widths = tuple(min(base * 2**i, 8 * base) for i in range(levels))
    # Larger images and wider models cost more per image: fewer passes in the same time. Cost grows with the
    # pixels and about linearly with the base width (measured: 64 px costs 3.2x 32 px at width 16, 5.6x at 24).
    cost_factor = (side / 32) ** 2 * base / 16
    ae_epochs = epochs or _epochs_for(int(AE_IMAGES_SEEN / cost_factor), train_count)
    return Plan(
        size=tuple(size),
        latent_channels=latent_channels,
        downscale=downscale,
        widths=widths,
        epochs=ae_epochs,
        batch_size=batch_size or 8,  # many small steps beat few large ones for the same compute (see module doc)
        learning_rate=learning_rate or 1e-3,
        denoiser_widths=(2 * denoiser_base, 4 * denoiser_base, 4 * denoiser_base) if side // downscale >= 16
        else (2 * denoiser_base, 4 * denoiser_base),
        denoiser_epochs=denoiser_epochs or _epochs_for(DENOISER_LATENTS_SEEN, 2 * train_count),
        denoiser_batch_size=batch_size or 32,
        denoiser_learning_rate=(learning_rate or 1e-3) / 2,
    )

"""Model sizes and training lengths chosen from the image size and the number of images.

The recipe (probes on held-out colour icons at 32 px, ``benchmarks/ae_recipe_probe.py``, figures in
``benchmarks/RESULTS.md``): an encoder and decoder of widths (16, 32, 64) with one ResNet block per
level and no attention (also at 64 px: within the same 10 minutes width 16 beat 24 there, 23.6 vs 23.1 dB),
downscale 4 to a 4-channel latent (4 x 8 x 8 for 32 px images), one normalisation group (GroupNorm over
all channels: +0.67 dB on photo patches and +0.28 dB on icons at 32 px against 8 groups), channels-last
convolutions, MSE reconstruction loss with a tiny KL weight, AdamW with warm-up and cosine decay to a
peak learning rate of 2e-3 (before the warm start below it did 1.6 dB worse than 1e-3; with it, over
60,000 images, +0.25 / +0.36 / +0.32 dB on icons 32 / icons 64 / photos 32 px and -0.20 dB on photos 64),
horizontal flips, and small batches (8). Measured alternatives that did
worse: L1 + MSE (-1.1 dB mid-run, -0.2 dB after 800 steps), halving the widths to (8, 16, 32)
(17.2 dB after 32,000 images, below the wider model after 3,200), and downscale 8 (4 levels from width 8,
16 or 4 latent channels: 1 dB below downscale 4 after 8,000 images).
Batch 8 beat batch 32 at equal compute (19.4 vs 15.5 dB). An EMA of the weights gave nothing at the
end of the cosine schedule. The denoiser is a small UNet over the scaled latents with a cosine noise
schedule and v-prediction; it trains for the same time at every image size (about 5 minutes on 2 CPU cores: the
time of ``DENOISER_LATENTS_SEEN`` latents of 4 x 8 x 8, by measured step times per latent size and width).

Warm start (``autoencoder.make_step``): every ResNet block starts as the identity, and for the first quarter
of the first stage's steps the encoder and the decoder each train against the fixed best linear code of the
latent layout (PCA of the pixel blocks) before they train jointly; in the same time (32,000 images) this raised
held-out photo patches from 28.9 to 31.7 dB at 32 px (PCA of the same code size: 31.9 dB). The plan's
length then, 60,000 images, reached 32.4 dB there; four times as many images gained about another dB (``RESULTS.md``).

Coarse to fine: the autoencoder is convolutional, so from 64 px up it first trains on the images halved in
size (2 x 2 averages), where an image costs a third as much, then on the images themselves; 70 % of its
time goes to the half-size images (``COARSE_SHARE``), the rest to at least one pass at full size. Held-out
icons at 64 px, before the warm start and with 32,000 images' time: 28.9 dB (PCA 25.6 dB) after 16 half-size
and 2 full-size epochs (8.7 min; with both, now 32.0 dB after 29 + 4 epochs in 8.0 min); the same model
after its half-size epochs alone reached 27.2 dB, an even split (11 + 4 epochs) 28.3 dB in more time, and
64 px alone 23.6 dB. At 32 px, first training at 16 px cost 0.9 dB (25.1 vs 25.9 dB): halved, the icons
lose too much, so smaller images train at full size only (``COARSE_MIN_SIDE``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError

AE_IMAGES_SEEN = 72_000  # autoencoder training length in 32 px images (about 8 minutes on 2 idle CPU cores)
DENOISER_LATENTS_SEEN = 120_000  # denoiser training length in 4 x 8 x 8 latents (about 5 minutes on 2 CPU cores)
MIN_EPOCHS, MAX_EPOCHS = 3, 500
PEAK_LEARNING_RATE = 2e-3  # of the autoencoder; the denoiser trains at a quarter of it
COARSE_SHARE = 0.7  # of the autoencoder's time spent on half-size images, when the plan chooses the lengths
COARSE_MIN_SIDE = 32  # ...and only when the halved images are this large (16 px icons lost too much: see the module doc)
MIN_FINE_EPOCHS = 1  # full-size epochs after the half-size stage: the model already reconstructs, so one may do
# Measured training step time per image (ms; forward + backward + fused AdamW, channels-last, width 16, batch 8,
# 2 idle CPU threads; `bench_train.py --only costs`, 2026-11-25) by pixel count: the cost grows faster than the
# pixel count from 32 to 64 px, so a fitted "overhead + pixels" line underestimated 64 px epochs by a fifth. Between
# anchors the plan interpolates, beyond them it extends the end slopes. (Before the fused optimizer and channels-last
# convolutions the steps took twice as long, and 32,000 images filled the time that now trains 72,000. The table
# before this one, measured on a busier machine, had 7.4 ms at 32 px and 22.9 at 64: it gave 60,000 images the
# same 8 minutes, which ran in 6 on an idle machine, and it gave 64 px images 17 % too little of the budget.)
STEP_MS_BY_PIXELS = ((16**2, 3.32), (32**2, 6.13), (64**2, 16.14))
# The same for the denoiser (ms per latent; base width 16, batch 32, 2 CPU threads) by latent positions. Counted in
# latents alone, its budget took 22 minutes at 64 and 128 px (16 x 16 latents, base width 24) and 79 at 256 px;
# measured there, on the busier day of the earlier table (6.15 and 19.8 ms at width 16): 11.1 and 39.3 ms per
# latent at width 24, from which the width factor below comes.
DENOISER_STEP_MS_BY_POSITIONS = ((8**2, 2.13), (16**2, 5.29), (32**2, 16.56))
DENOISER_WIDTH_EXPONENT = 1.45  # cost against base width: 16 -> 24 measured 1.80x at 16 x 16 latents


@dataclass(frozen=True)
class Plan:
    """Everything ``latentscope train`` decides before it starts (each settable by an option)."""

    size: tuple[int, int]
    latent_channels: int
    downscale: int
    widths: tuple[int, ...]
    epochs: int
    coarse_epochs: int  # autoencoder epochs on the images halved in size, before ``epochs`` at full size
    batch_size: int
    learning_rate: float
    denoiser_widths: tuple[int, ...]
    denoiser_epochs: int
    denoiser_batch_size: int
    denoiser_learning_rate: float

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.latent_channels, self.size[0] // self.downscale, self.size[1] // self.downscale

    @property
    def coarse_size(self) -> tuple[int, int]:
        return self.size[0] // 2, self.size[1] // 2


def _epochs_for(examples_seen: int, count: int, minimum: int = MIN_EPOCHS) -> int:
    return int(min(MAX_EPOCHS, max(minimum, round(examples_seen / max(1, count)))))


LIMITS = {"epochs": 100_000, "denoiser_epochs": 100_000, "batch_size": 65_536, "width": 1024}


def _check_limits(**values) -> None:
    for name, value in values.items():
        if value is not None and not 1 <= value <= LIMITS[name]:
            raise InputError(f"{name.replace('_', ' ')} {value}: must be between 1 and {LIMITS[name]:,}")


def _interpolate(anchors, x: float) -> float:
    """Piecewise-linear interpolation of ``(x, ms)`` anchors (linear extrapolation past both ends, at least 1 ms)."""
    for (x0, y0), (x1, y1) in zip(anchors, anchors[1:]):
        if x <= x1:
            break
    return max(1.0, y0 + (x - x0) * (y1 - y0) / (x1 - x0))


def step_ms(pixels: int) -> float:
    """Autoencoder step time per image of ``pixels`` pixels at width 16 (``STEP_MS_BY_PIXELS``)."""
    return _interpolate(STEP_MS_BY_PIXELS, pixels)


def relative_cost(side: int, base: int) -> float:
    """Training cost of one image of ``side`` pixels through a model of base width ``base``, 32 px at width 16 = 1."""
    return step_ms(side**2) / step_ms(32**2) * base / 16


def denoiser_relative_cost(latent_positions: int, base: int) -> float:
    """Training cost of one latent of ``latent_positions`` positions through a denoiser of base width ``base``,
    4 x 8 x 8 at width 16 (the plan at 32 px) = 1."""
    return (_interpolate(DENOISER_STEP_MS_BY_POSITIONS, latent_positions) / DENOISER_STEP_MS_BY_POSITIONS[0][1]
            * (base / 16) ** DENOISER_WIDTH_EXPONENT)


def can_train_coarse(size: tuple[int, int], downscale: int, min_side: int = 16) -> bool:
    """Whether halved images are at least ``min_side`` px and still a multiple of the downscale factor."""
    return all(side % 2 == 0 and side // 2 >= min_side and (side // 2) % downscale == 0 for side in size)


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
    coarse_epochs: int | None = None,
) -> Plan:
    _check_limits(epochs=epochs, denoiser_epochs=denoiser_epochs, batch_size=batch_size, width=width)
    if coarse_epochs is not None and not 0 <= coarse_epochs <= LIMITS["epochs"]:
        raise InputError(f"coarse epochs {coarse_epochs}: must be between 0 and {LIMITS['epochs']:,}")
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
    ae_epochs, coarse_epochs = _autoencoder_epochs(tuple(size), downscale, base, train_count, epochs, coarse_epochs)
    return Plan(
        size=tuple(size),
        latent_channels=latent_channels,
        downscale=downscale,
        widths=widths,
        epochs=ae_epochs,
        coarse_epochs=coarse_epochs,
        batch_size=batch_size or 8,  # many small steps beat few large ones for the same compute (see module doc)
        learning_rate=learning_rate or PEAK_LEARNING_RATE,
        denoiser_widths=(2 * denoiser_base, 4 * denoiser_base, 4 * denoiser_base) if side // downscale >= 16
        else (2 * denoiser_base, 4 * denoiser_base),
        denoiser_epochs=denoiser_epochs or _epochs_for(
            DENOISER_LATENTS_SEEN / denoiser_relative_cost((size[0] // downscale) * (size[1] // downscale), denoiser_base),
            2 * train_count),  # the same time at every size (the images and their mirror images)
        denoiser_batch_size=batch_size or 32,
        denoiser_learning_rate=(learning_rate or PEAK_LEARNING_RATE) / 4,
    )


def _autoencoder_epochs(size: tuple[int, int], downscale: int, base: int, train_count: int, epochs: int | None,
                        coarse_epochs: int | None) -> tuple[int, int]:
    """(full-size epochs, half-size epochs). The plan splits the time budget between the two sizes; explicit
    ``epochs`` without ``coarse_epochs`` means full size only. Larger images and wider models cost more per
    image, so they get fewer passes in the same time."""
    if coarse_epochs and not can_train_coarse(size, downscale):
        raise InputError(f"coarse epochs {coarse_epochs}: image size {size[0]}x{size[1]} halved is under 16 px "
                         f"or not a multiple of the downscale factor {downscale}; use 0")
    side = min(size)
    budget = AE_IMAGES_SEEN / relative_cost(side, base)  # full-size images' worth of time
    if coarse_epochs is None:
        coarse_epochs = 0 if epochs is not None or not can_train_coarse(size, downscale, COARSE_MIN_SIDE) else _epochs_for(
            int(COARSE_SHARE * budget * relative_cost(side, base) / relative_cost(side // 2, base)), train_count)
    if epochs is None:
        epochs = _epochs_for(int((1 - COARSE_SHARE) * budget), train_count, MIN_FINE_EPOCHS) if coarse_epochs \
            else _epochs_for(int(budget), train_count)
    return epochs, coarse_epochs

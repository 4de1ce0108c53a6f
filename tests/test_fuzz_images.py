"""Property-based fuzzing of the image loader: any bytes give a prepared image or an ImageError, quickly."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from latentscope.errors import ImageError
from latentscope.images import prepare_image

from reliability import note

FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")
SIZE = (16, 16)
TIME_LIMIT = 2.0
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KINDS_SEEN: dict[str, int] = {}


def real_image(fmt: str, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8))
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


SAMPLES = {fmt: real_image(fmt) for fmt in FORMATS}


def check(data: bytes, kind: str) -> None:
    """The loader's whole contract: a usable image or an ImageError with a reason, within the time limit."""
    started = time.perf_counter()
    try:
        prepared = prepare_image(data, SIZE, max_pixels=4_000_000)
    except ImageError as exc:
        assert str(exc), "an error needs a reason"
    else:
        assert prepared.pixels.shape == (*SIZE, 3) and prepared.pixels.dtype == np.uint8
    assert time.perf_counter() - started < TIME_LIMIT
    KINDS_SEEN[kind] = KINDS_SEEN.get(kind, 0) + 1


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(data):
    check(data, "random bytes")


@FUZZ
@given(st.sampled_from(FORMATS), st.floats(0.0, 1.0))
def test_truncated_real_images(fmt, fraction):
    data = SAMPLES[fmt]
    check(data[: int(len(data) * fraction)], "truncated")


@FUZZ
@given(st.sampled_from(FORMATS), st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 7)), min_size=1, max_size=8))
def test_bit_flipped_real_images(fmt, flips):
    data = bytearray(SAMPLES[fmt])
    for where, bit in flips:
        data[min(int(where * len(data)), len(data) - 1)] ^= 1 << bit
    check(bytes(data), "bit-flipped")


@FUZZ
@given(st.sampled_from(FORMATS), st.binary(min_size=1, max_size=64))
def test_real_image_with_junk_prefix(fmt, junk):
    check(junk + SAMPLES[fmt], "junk prefix")


def png_header(width: int, height: int, bit_depth: int = 8, colour: int = 2) -> bytes:
    body = bytes(zlib.compress(b"\x00" * 16))
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@FUZZ
@given(st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1), st.sampled_from([1, 8, 16]), st.sampled_from([0, 2, 3, 6]))
def test_enormous_or_zero_dimensions_in_headers(width, height, depth, colour):
    check(png_header(width, height, depth, colour), "forged dimensions")


@FUZZ
@given(st.integers(0, 65535), st.integers(0, 65535))
def test_forged_gif_dimensions(width, height):
    data = bytearray(SAMPLES["GIF"])
    data[6:10] = struct.pack("<HH", width, height)
    check(bytes(data), "forged dimensions")


def test_wrong_extension_is_irrelevant():
    prepared = prepare_image(SAMPLES["PNG"], SIZE)  # the loader sniffs content, the name plays no part
    assert prepared.width == 20 and prepared.height == 24


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    total = sum(KINDS_SEEN.values())
    print(f"\nfuzzed the image loader with {total} inputs: " + ", ".join(f"{k} {v}" for k, v in sorted(KINDS_SEEN.items())))
    for kind, count in sorted(KINDS_SEEN.items()):
        note("bad-input", what="image file bytes", variant=kind, count=count)

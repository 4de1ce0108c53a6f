"""Opening, validating and resizing images: every mode and every kind of bad file."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from latentscope.errors import ImageError, InputError
from latentscope.images import (
    as_uint8_images,
    find_images,
    fit_image,
    label_from_relpath,
    open_image,
    prepare_image,
    read_file,
    to_rgb,
)


def encoded(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **kwargs)
    return out.getvalue()


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 20))  # blue strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    rgb, width, height = open_image(encoded(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert (width, height) == (20, 40)
    assert rgb.size == (20, 40)
    top = np.asarray(rgb)[:8].reshape(-1, 3).mean(0)
    assert top[2] > 150 and top[0] < 100  # the blue strip is now on top


def test_palette_with_transparency_is_composited_on_background():
    img = Image.new("P", (8, 8), 0)
    img.putpalette([255, 0, 0] + [0, 255, 0] * 255)
    img.info["transparency"] = 0
    rgb, _, _ = open_image(encoded(img, "PNG", transparency=0), background=(0, 0, 255))
    assert np.asarray(rgb)[0, 0].tolist() == [0, 0, 255]


def test_alpha_composited_on_configured_background():
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    img.putpixel((0, 0), (255, 0, 0, 255))
    rgb, _, _ = open_image(encoded(img), background=(0, 0, 0))
    pixels = np.asarray(rgb)
    assert pixels[0, 0].tolist() == [255, 0, 0]
    assert pixels[1, 1].tolist() == [0, 0, 0]


def test_grey_alpha_and_grey_modes():
    la = Image.new("LA", (4, 4), (100, 255))
    assert np.asarray(open_image(encoded(la))[0])[0, 0].tolist() == [100, 100, 100]
    grey = Image.new("L", (4, 4), 30)
    assert np.asarray(open_image(encoded(grey))[0])[0, 0].tolist() == [30, 30, 30]
    bilevel = Image.new("1", (4, 4), 1)
    assert np.asarray(open_image(encoded(bilevel))[0])[0, 0].tolist() == [255, 255, 255]


def test_sixteen_bit_grey_is_scaled_not_clipped():
    values = np.full((6, 6), 32768, np.uint16)
    img = Image.fromarray(values)
    assert img.mode.startswith("I")
    rgb, _, _ = open_image(encoded(img))
    assert abs(int(np.asarray(rgb)[0, 0, 0]) - 128) <= 1


def test_cmyk_jpeg_becomes_rgb():
    img = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red
    rgb, _, _ = open_image(encoded(img, "JPEG", quality=95))
    r, g, b = np.asarray(rgb)[4, 4].tolist()
    assert r > 200 and g < 60 and b < 60


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    data = io.BytesIO()
    frames[0].save(data, format="GIF", save_all=True, append_images=frames[1:])
    rgb, _, _ = open_image(data.getvalue())
    r, g, _ = np.asarray(rgb)[0, 0].tolist()
    assert r > 200 and g < 50


def test_float_mode_image():
    img = Image.fromarray(np.full((4, 4), 0.5, np.float32), mode="F")
    assert np.asarray(to_rgb(img))[0, 0, 0] in (127, 128)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"this is not an image at all", "not an image file"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "corrupt"),
    ],
)
def test_garbage_is_a_clear_error(data, reason):
    with pytest.raises(ImageError, match=reason):
        open_image(data)


def test_truncated_png_and_jpeg():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    for fmt in ("PNG", "JPEG"):
        data = encoded(img, fmt)
        with pytest.raises(ImageError, match="truncated|corrupt"):
            open_image(data[: len(data) // 2])


def _png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header claims the given size (data is not needed to trip the guard)."""
    data = bytearray(encoded(Image.new("L", (1, 1))))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def test_decompression_bomb_refused_before_decoding():
    with pytest.raises(ImageError, match="over the limit"):
        open_image(_png_with_size(12000, 12000))
    with pytest.raises(ImageError, match="over the limit"):
        open_image(encoded(Image.new("RGB", (100, 100))), max_pixels=5000)


def test_zero_size_header():
    with pytest.raises(ImageError):
        open_image(_png_with_size(0, 10))


def test_read_file_reasons(tmp_path, monkeypatch):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        read_file(empty)
    with pytest.raises(ImageError, match="not found"):
        read_file(tmp_path / "missing.png")
    folder = tmp_path / "folder.png"
    folder.mkdir()
    with pytest.raises(ImageError, match="folder"):
        read_file(folder)
    locked = tmp_path / "locked.png"
    locked.write_bytes(b"x")
    real_open = open

    def deny(path, *args, **kwargs):
        if str(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", deny)
    with pytest.raises(ImageError, match="permission denied"):
        read_file(locked)


def test_fit_center_crop_and_pad():
    img = Image.new("RGB", (80, 40), (10, 20, 30))
    cropped = fit_image(img, (32, 32), "center-crop")
    assert cropped.size == (32, 32)
    assert np.asarray(cropped)[0, 0].tolist() == [10, 20, 30]
    padded = fit_image(img, (32, 32), "pad", background=(255, 0, 0))
    assert padded.size == (32, 32)
    pixels = np.asarray(padded)
    assert pixels[0, 0].tolist() == [255, 0, 0]  # padding above
    assert pixels[16, 16].tolist() == [10, 20, 30]
    assert fit_image(img, (20, 40), "pad").size == (40, 20)  # (height, width)
    with pytest.raises(InputError):
        fit_image(img, (32, 32), "stretch")


def test_prepare_image_large_jpeg_uses_draft_and_keeps_true_size():
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (1200, 1600, 3), dtype=np.uint8))
    prepared = prepare_image(encoded(img, "JPEG"), (32, 32))
    assert prepared.pixels.shape == (32, 32, 3)
    assert (prepared.width, prepared.height) == (1600, 1200)
    thumb = Image.open(io.BytesIO(prepared.thumbnail))
    assert max(thumb.size) == 96


def test_find_images_recursive_sorted_skips_hidden_and_other_files(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for rel in ("b/1.png", "a/deep/2.JPG", "top.webp", ".hidden/3.png", "notes.txt", "a/.4.png"):
        (tmp_path / rel).write_bytes(b"x")
    root, found = find_images(tmp_path)
    assert root == tmp_path.resolve()
    assert [f.relpath for f in found] == ["a/deep/2.JPG", "b/1.png", "top.webp"]
    assert label_from_relpath("a/deep/2.JPG") == "a" and label_from_relpath("top.webp") == ""


def test_find_images_survives_symlink_loops_and_broken_links(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "1.png").write_bytes(b"x")
    os.symlink(tmp_path, tmp_path / "sub" / "loop")
    os.symlink(tmp_path / "gone.png", tmp_path / "broken.png")
    _, found = find_images(tmp_path)
    by_path = {f.relpath: f for f in found}
    assert set(by_path) == {"sub/1.png", "broken.png"}
    assert by_path["broken.png"].error == "broken symbolic link"


def test_find_images_excludes_scope_and_rejects_missing(tmp_path):
    (tmp_path / "scope" / "thumbs").mkdir(parents=True)
    (tmp_path / "scope" / "thumbs" / "0.jpg").write_bytes(b"x")
    (tmp_path / "1.png").write_bytes(b"x")
    _, found = find_images(tmp_path, exclude=[tmp_path / "scope"])
    assert [f.relpath for f in found] == ["1.png"]
    with pytest.raises(InputError, match="no such folder"):
        find_images(tmp_path / "nope")


def test_find_images_from_list(tmp_path):
    (tmp_path / "x").mkdir()
    files = [tmp_path / "x" / "b.png", tmp_path / "a.png"]
    for f in files:
        f.write_bytes(b"x")
    root, found = find_images([str(f) for f in files] + [str(tmp_path / "missing.png")])
    assert root == tmp_path
    assert [(f.relpath, f.error) for f in found] == [("a.png", ""), ("missing.png", "file not found"), ("x/b.png", "")]


def test_as_uint8_images_accepts_grey_float_and_rgba():
    grey = np.linspace(0, 1, 2 * 4 * 4).reshape(2, 4, 4)
    out = as_uint8_images(grey)
    assert out.shape == (2, 4, 4, 3) and out.dtype == np.uint8 and out.max() == 255
    rgba = np.zeros((1, 2, 2, 4), np.uint8)
    assert as_uint8_images(rgba)[0, 0, 0].tolist() == [255, 255, 255]  # transparent -> white
    with pytest.raises(InputError):
        as_uint8_images(np.zeros((2, 3)))

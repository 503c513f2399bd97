"""ml.render: the display copy and the compact forms a worker stores."""

from __future__ import annotations

import io
import zlib

import numpy as np
from PIL import Image

from ml import render


def test_a_mask_is_stored_as_one_bit_and_read_back_exactly():
    mask = np.zeros((37, 53), bool)
    mask[5:20, 7:30] = True
    content = render.mask_png(mask)
    with Image.open(io.BytesIO(content)) as image:
        assert (image.mode, image.size) == ("1", (53, 37))
    assert (render.read_mask(content) == mask).all()


def test_older_eight_bit_masks_read_the_same():
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True
    assert (
        render.read_mask(render.png_bytes(mask.astype(np.uint8) * 255)) == mask
    ).all()


def test_a_heatmap_is_stored_small_and_grey():
    heatmap = np.linspace(0, 1, 256 * 256, dtype=np.float32).reshape(256, 256)
    with Image.open(io.BytesIO(render.heatmap_png(heatmap))) as image:
        assert (image.mode, image.size) == ("L", (64, 64))
        levels = np.asarray(image)
    assert levels.min() < 5 and levels.max() > 250
    back = render.read_heatmap(render.heatmap_png(heatmap), 300, 200)
    assert back.shape == (200, 300) and 0 <= back.min() and back.max() <= 1


def test_a_small_heatmap_keeps_its_size():
    heatmap = np.random.default_rng(0).random((20, 30)).astype(np.float32)
    with Image.open(io.BytesIO(render.heatmap_png(heatmap))) as image:
        assert image.size == (30, 20)


def test_the_display_copy_fits_1024_and_keeps_colour_scans_in_colour():
    colour = np.zeros((600, 2048, 3), np.uint8)
    colour[..., 0] = 200
    with Image.open(io.BytesIO(render.display_png(colour))) as image:
        assert (image.mode, image.size) == ("RGB", (1024, 300))
    small = np.full((40, 50, 3), 77, np.uint8)
    with Image.open(io.BytesIO(render.display_png(small))) as image:
        assert (image.mode, image.size) == ("L", (50, 40))
        assert np.asarray(image).max() == 77


def _png(pixels: np.ndarray, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", **options)
    return buffer.getvalue()


def test_an_upload_that_already_is_a_display_copy_is_kept_as_it_is():
    grey = np.random.default_rng(1).integers(0, 255, (40, 60), dtype=np.uint8)
    content = _png(grey, dpi=(72, 72))
    rgb = np.repeat(grey[..., None], 3, axis=2)
    assert render.display_copy(content, rgb) is content


def _encoded(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, **options)
    return buffer.getvalue()


def _with_chunk(png: bytes, kind: bytes, data: bytes) -> bytes:
    """The PNG with one more chunk after its header (IHDR is 8 + 25 bytes in)."""
    chunk = len(data).to_bytes(4) + kind + data + zlib.crc32(kind + data).to_bytes(4)
    return png[:33] + chunk + png[33:]


def test_a_display_copy_is_drawn_when_the_upload_is_not_a_plain_small_png():
    from PIL import PngImagePlugin

    grey = np.random.default_rng(2).integers(0, 255, (40, 60), dtype=np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    named = PngImagePlugin.PngInfo()
    named.add_text("Comment", "Jane Doe 1950-01-01")
    cases = {
        "text chunk": _png(grey, pnginfo=named),
        "gamma": _with_chunk(_png(grey), b"gAMA", (45455).to_bytes(4)),
        "16-bit": _png(grey.astype(np.uint16) * 257),
        "palette": _encoded(Image.fromarray(grey).convert("P"), format="PNG"),
        "JPEG": _encoded(Image.fromarray(grey), format="JPEG"),
    }
    for name, content in cases.items():
        copy = render.display_copy(content, rgb)
        assert copy != content, name
        with Image.open(io.BytesIO(copy)) as image:
            assert (image.mode, image.size) == ("L", (60, 40)), name
            assert image.info == {}, name
            assert np.array_equal(np.asarray(image), grey), name
    large = np.zeros((600, 2048), np.uint8)
    copy = render.display_copy(_png(large), np.repeat(large[..., None], 3, axis=2))
    with Image.open(io.BytesIO(copy)) as image:
        assert image.size == (1024, 300)

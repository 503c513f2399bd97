from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bench.synthetic import dicom_bytes, ultrasound_dataset, ultrasound_dicom
from ml.decode import DecodeError, decode_image


def encode(array: np.ndarray, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def make_dicom(pixels: np.ndarray | None, **options: Any) -> bytes:
    """A DICOM file with known tags: patient H123, accession ACC1, spacing 0.1 x 0.12."""
    return ultrasound_dicom(pixels, patient_id="H123", accession="ACC1", **options)


GREY = (np.arange(40 * 60) % 251).astype(np.uint8).reshape(40, 60)
NOISE = np.random.default_rng(0).integers(0, 256, (40, 60), dtype=np.uint8)
RGB = np.stack([GREY, GREY[::-1], 255 - GREY], axis=-1)


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (encode(GREY, "PNG"), "PNG"),
        (encode(RGB, "PNG"), "PNG"),
        (encode(RGB, "JPEG", quality=95), "JPEG"),
        (encode(GREY, "BMP"), "BMP"),
        (encode(RGB, "TIFF"), "TIFF"),
    ],
)
def test_it_decodes_accepted_formats_to_rgb(data, fmt):
    image = decode_image(data)
    assert image.format == fmt
    assert image.pixels.shape == (40, 60, 3) and image.pixels.dtype == np.uint8
    assert (image.width, image.height) == (60, 40)


def test_it_keeps_exact_pixels_of_a_lossless_greyscale_png():
    image = decode_image(encode(GREY, "PNG"))
    assert np.array_equal(image.pixels[..., 0], GREY) and np.array_equal(
        image.pixels[..., 2], GREY
    )
    assert image.bit_depth == 8


def test_it_scales_16_bit_png_to_8_bit_over_its_range():
    wide = (GREY.astype(np.uint16) * 200 + 1000).astype(np.uint16)
    image = decode_image(encode(wide, "PNG"))
    assert image.bit_depth == 16
    assert image.pixels.min() == 0 and image.pixels.max() == 255
    assert np.corrcoef(image.pixels[..., 0].ravel(), GREY.ravel())[0, 1] > 0.999


def test_it_converts_palette_cmyk_and_alpha_images():
    assert decode_image(
        encode(np.asarray(Image.fromarray(RGB).convert("P")), "PNG")
    ).pixels.shape == (40, 60, 3)
    cmyk = io.BytesIO()
    Image.fromarray(RGB).convert("CMYK").save(cmyk, format="JPEG")
    assert decode_image(cmyk.getvalue()).pixels.shape == (40, 60, 3)
    rgba = np.dstack([RGB, np.full(GREY.shape, 128, np.uint8)])
    assert decode_image(encode(rgba, "PNG")).pixels.shape == (40, 60, 3)


def test_it_reads_files_and_file_objects(tmp_path):
    path = tmp_path / "scan.png"
    path.write_bytes(encode(GREY, "PNG"))
    assert decode_image(path).width == 60
    with path.open("rb") as handle:
        assert decode_image(handle).height == 40


def test_it_decodes_greyscale_dicom_with_its_tags():
    image = decode_image(make_dicom(GREY))
    assert image.format == "DICOM"
    assert np.array_equal(image.pixels[..., 1], GREY)
    assert image.pixel_spacing_mm == (0.1, 0.12)
    assert (
        image.dicom["PatientID"] == "H123" and image.dicom["AccessionNumber"] == "ACC1"
    )


def test_it_decodes_16_bit_rgb_multiframe_and_compressed_dicom():
    assert decode_image(make_dicom(GREY.astype(np.uint16) * 100)).bit_depth == 16
    assert np.array_equal(decode_image(make_dicom(RGB, photometric="RGB")).pixels, RGB)
    multi = decode_image(make_dicom(np.stack([GREY, 255 - GREY]), frames=2))
    assert multi.frame_count == 2 and multi.pixels.shape == (40, 60, 3)
    assert decode_image(make_dicom(GREY, transfer_syntax="rle")).pixels.shape == (
        40,
        60,
        3,
    )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"this is a text file, not a scan\n" * 10, "not a recognised image"),
        (encode(NOISE, "PNG")[:1200], "corrupt or truncated"),
        (encode(GREY, "GIF"), "GIF images are not accepted"),
        (make_dicom(None), "no pixel data"),
        (b"\0" * 128 + b"DICM" + b"\xff" * 64, "DICOM"),
    ],
)
def test_it_rejects_bad_files_with_a_specific_reason(data, reason):
    with pytest.raises(DecodeError, match=reason):
        decode_image(data)


def test_it_rejects_images_over_the_pixel_limit_before_decoding_them():
    with pytest.raises(DecodeError, match="over the limit"):
        decode_image(encode(GREY, "PNG"), max_pixels=1000)


def _smooth_rgb() -> np.ndarray:
    y, x = np.mgrid[0:40, 0:64]
    grey = ((x * 3 + y * 2) % 256).astype(np.uint8)
    return np.stack([grey, 255 - grey, (y * 5 % 256).astype(np.uint8)], axis=-1)


def test_it_converts_ybr_full_dicom_to_rgb_once():
    from pydicom.pixels import convert_color_space

    rgb = _smooth_rgb()
    ds = ultrasound_dataset(rgb, photometric="YBR_FULL")
    ds.PixelData = convert_color_space(rgb, "RGB", "YBR_FULL").tobytes()
    image = decode_image(dicom_bytes(ds))
    assert np.abs(image.pixels.astype(int) - rgb).max() <= 2


def test_it_decodes_jpeg_baseline_dicom_colour_and_multiframe():
    rgb = _smooth_rgb()
    frames = [rgb, rgb[::-1], rgb[:, ::-1]]
    # Written as YBR_FULL_422 frames, JPEG quality 95.
    image = decode_image(
        ultrasound_dicom(
            np.stack(frames), photometric="RGB", frames=3, transfer_syntax="jpeg"
        )
    )
    reference = np.asarray(Image.open(io.BytesIO(encode(rgb, "JPEG", quality=95))))
    assert image.frame_count == 3 and image.pixels.shape == (40, 64, 3)
    assert np.abs(image.pixels.astype(int) - reference).mean() < 2


def test_it_decodes_rle_rgb_dicom_exactly():
    rgb = _smooth_rgb()
    data = ultrasound_dicom(rgb, photometric="RGB", transfer_syntax="rle")
    assert np.array_equal(decode_image(data).pixels, rgb)


def test_it_names_the_transfer_syntax_it_cannot_decode():
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    ds = ultrasound_dataset(GREY)
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8 not a JPEG-LS stream \xff\xd9"])
    with pytest.raises(DecodeError, match="JPEG-LS"):
        decode_image(dicom_bytes(ds))

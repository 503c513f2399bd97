"""A corpus of broken and malicious files, built in memory by code (nothing checked in).

Each item says what it is, the name it is uploaded under, and what a correct portal does
with it: `reject` (with a reason mentioning one of `reasons`), `accept` (it really is a
readable scan, whatever its name or extra bytes), or `archive` (a zip: bad members are
refused by name with a reason, nothing is written outside storage, nothing executes).
"""

from __future__ import annotations

import functools
import gzip
import io
import stat
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

REJECT, ACCEPT, ARCHIVE = "reject", "accept", "archive"
# DICOM files name a patient; the tests upload them to this patient's study.
PATIENT_ID = "H-HOSTILE-1"


@dataclass(frozen=True)
class Hostile:
    kind: str
    filename: str
    content: bytes
    expect: str
    # Lower-case fragments; a rejection reason must contain at least one of them.
    reasons: tuple[str, ...] = ()

    def __repr__(self) -> str:  # short ids in pytest output
        return self.kind


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def scan_pixels(width: int = 96, height: int = 72) -> np.ndarray:
    """Something like an ultrasound frame: a dark fan with a brighter blob."""
    y, x = np.mgrid[0:height, 0:width]
    blob = np.exp(-(((x - width / 2) ** 2) + ((y - height / 2) ** 2)) / (width * 3))
    return (40 + 180 * blob).astype(np.uint8)


def good_png(width: int = 96, height: int = 72) -> bytes:
    return _save(Image.fromarray(scan_pixels(width, height)), "PNG")


def good_jpeg() -> bytes:
    return _save(Image.fromarray(scan_pixels()).convert("RGB"), "JPEG", quality=90)


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + tag
        + data
        + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    )


def png_claiming(width: int, height: int, rows: int = 16) -> bytes:
    """A tiny PNG whose header claims width x height pixels (8-bit grey)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    row = b"\x00" + b"\x00" * min(width, 4096)
    data = zlib.compress(row * rows, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", data)
        + _png_chunk(b"IEND", b"")
    )


def _png_text_bomb() -> bytes:
    """A valid small PNG with a zTXt chunk that inflates to 64 MB."""
    png = good_png()
    text = b"Comment\x00\x00" + zlib.compress(b"A" * (64 * 1024 * 1024), 9)
    end = png.rindex(b"IEND") - 4
    return png[:end] + _png_chunk(b"zTXt", text) + png[end:]


def _png_bad_crc() -> bytes:
    png = bytearray(good_png())
    index = png.index(b"IDAT") + 8
    png[index] ^= 0xFF
    return bytes(png)


def _tiff_claiming(width: int, height: int) -> bytes:
    """A minimal little-endian TIFF header claiming a huge 8-bit grey image."""
    entries = [
        (256, 4, 1, width),  # ImageWidth
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: black is zero
        (273, 4, 1, 8),  # StripOffsets
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, width * height & 0xFFFFFFFF),  # StripByteCounts
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        packed = struct.pack("<I", value) if kind == 4 else struct.pack("<HH", value, 0)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 16) + b"\x00" * 8 + ifd


def _dicom(
    *,
    pixels: np.ndarray | None = None,
    rows: int | None = None,
    columns: int | None = None,
    pixel_bytes: bytes | None = None,
    patient_name: str = "Doe^Jane",
    patient_id: str = PATIENT_ID,
) -> bytes:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"  # US Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.PatientName = patient_name
    dataset.PatientID = patient_id
    dataset.Modality = "US"
    if pixels is not None or pixel_bytes is not None:
        height, width = pixels.shape if pixels is not None else (rows, columns)
        bits = 16 if pixels is not None and pixels.dtype == np.uint16 else 8
        dataset.Rows = rows or height
        dataset.Columns = columns or width
        dataset.SamplesPerPixel = 1
        dataset.PhotometricInterpretation = "MONOCHROME2"
        dataset.BitsAllocated = bits
        dataset.BitsStored = bits
        dataset.HighBit = bits - 1
        dataset.PixelRepresentation = 0
        dataset.PixelData = pixel_bytes if pixel_bytes is not None else pixels.tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def good_dicom(**kwargs: str) -> bytes:
    return _dicom(pixels=scan_pixels(), **kwargs)


def _zip(members: list[tuple[str, bytes]], **options: object) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data, **options)
    return buffer.getvalue()


def _zip_bomb(size: int = 256 * 1024 * 1024) -> bytes:
    """One member that inflates to `size` bytes of zeros (about 250 KB on the wire)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        info = zipfile.ZipInfo("bomb.png")
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w", force_zip64=True) as member:
            chunk = b"\0" * (1024 * 1024)
            for _ in range(size // len(chunk)):
                member.write(chunk)
    return buffer.getvalue()


def _zip_with_symlink() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        link = zipfile.ZipInfo("link-to-passwd.png")
        link.create_system = 3  # Unix, so external_attr carries the mode
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
        archive.writestr("good.png", good_png())
    return buffer.getvalue()


def _zip_encrypted_flag() -> bytes:
    """A member flagged as encrypted (general purpose bit 0) without a usable password."""
    data = bytearray(_zip([("secret.png", good_png())]))
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        index = data.index(signature) + offset
        data[index] |= 0x01
    return bytes(data)


def _nested_zip(depth: int) -> bytes:
    content = _zip([("deep.png", good_png())])
    for level in range(depth):
        content = _zip([(f"level{level}.zip", content)])
    return content


def _tar_with_symlink() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        link = tarfile.TarInfo("scan.png")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/shadow"
        archive.addfile(link)
        escape = tarfile.TarInfo("../../escape.png")
        data = good_png()
        escape.size = len(data)
        archive.addfile(escape, io.BytesIO(data))
    return buffer.getvalue()


def _animated_gif() -> bytes:
    frames = [Image.fromarray(scan_pixels() // (i + 1)) for i in range(3)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:])


def _animated_png() -> bytes:
    frames = [Image.fromarray(scan_pixels() // (i + 1)) for i in range(3)]
    return _save(frames[0], "PNG", save_all=True, append_images=frames[1:])


def _multipage_tiff() -> bytes:
    frames = [Image.fromarray(scan_pixels() // (i + 1)) for i in range(3)]
    return _save(frames[0], "TIFF", save_all=True, append_images=frames[1:])


GENERIC_DECODER_FAILURE = "file could not be read as an image"
NOT_AN_IMAGE = ("not a recognised image", "not accepted", "not an image", "unsupported")
CORRUPT = ("corrupt", "truncated", "unreadable", "broken", "cannot", "invalid")
TOO_BIG = ("pixels", "too large", "limit")
TOO_SMALL = ("smaller than the minimum",)
BAD_SHAPE = ("aspect ratio",)
ARCHIVE_REASONS = (
    "zip",
    "archive",
    "compress",
    "link",
    "outside",
    "..",
    "encrypt",
    "password",
    "nested",
    "deep",
    "too large",
    "too many",
    "limit",
    "ratio",
)


@functools.cache
def build() -> tuple[Hostile, ...]:
    png, jpeg = good_png(), good_jpeg()
    grey16 = (scan_pixels().astype(np.uint16) * 250).astype(np.uint16)
    items = [
        # Not images at all, or nothing there.
        Hostile("empty", "empty.png", b"", REJECT, ("empty",)),
        Hostile("one-byte", "x.png", b"\x89", REJECT, NOT_AN_IMAGE + CORRUPT),
        Hostile("text", "notes.png", b"patient notes\n" * 20, REJECT, NOT_AN_IMAGE),
        Hostile(
            "html-as-png",
            "page.png",
            b"<!doctype html><script>alert(document.cookie)</script>",
            REJECT,
            NOT_AN_IMAGE,
        ),
        Hostile(
            "svg-with-script",
            "drawing.svg",
            b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
            REJECT,
            NOT_AN_IMAGE,
        ),
        Hostile(
            "pdf",
            "report.pdf",
            b"%PDF-1.7\n1 0 obj<<>>endobj\n%%EOF",
            REJECT,
            NOT_AN_IMAGE,
        ),
        Hostile(
            "elf-as-jpg",
            "scan.jpg",
            b"\x7fELF\x02\x01\x01" + b"\0" * 200,
            REJECT,
            NOT_AN_IMAGE,
        ),
        Hostile(
            "gzip-as-png",
            "scan.png",
            gzip.compress(png),
            REJECT,
            NOT_AN_IMAGE + ("gzip",),
        ),
        # Broken images.
        Hostile("truncated-png", "cut.png", png[: len(png) // 2], REJECT, CORRUPT),
        Hostile("truncated-jpeg", "cut.jpg", jpeg[: len(jpeg) // 2], REJECT, CORRUPT),
        Hostile("png-bad-crc", "crc.png", _png_bad_crc(), REJECT, CORRUPT),
        Hostile(
            "png-header-only", "header.png", png[:33], REJECT, CORRUPT + NOT_AN_IMAGE
        ),
        Hostile(
            "bmp-bad-header",
            "scan.bmp",
            b"BM" + b"\xff" * 60,
            REJECT,
            CORRUPT + NOT_AN_IMAGE,
        ),
        # Bombs: tiny files, enormous pixel counts.
        Hostile(
            "png-bomb-100k-square",
            "bomb.png",
            png_claiming(100_000, 100_000),
            REJECT,
            TOO_BIG,
        ),
        Hostile(
            "png-bomb-60mpx", "bomb2.png", png_claiming(8_000, 8_000), REJECT, TOO_BIG
        ),
        Hostile(
            "tiff-bomb",
            "bomb.tif",
            _tiff_claiming(200_000, 200_000),
            REJECT,
            TOO_BIG + CORRUPT,
        ),
        Hostile(
            "png-ztxt-bomb",
            "text-bomb.png",
            _png_text_bomb(),
            REJECT,
            CORRUPT + TOO_BIG,
        ),
        # Unusual but legitimate images: read, never crash.
        Hostile(
            "png-16-bit",
            "deep.png",
            _save(Image.fromarray(grey16), "PNG"),
            ACCEPT,
        ),
        Hostile(
            "jpeg-cmyk",
            "cmyk.jpg",
            _save(Image.new("CMYK", (80, 60), (0, 50, 90, 20)), "JPEG"),
            ACCEPT,
        ),
        Hostile(
            "png-palette",
            "palette.png",
            _save(Image.fromarray(scan_pixels()).convert("P"), "PNG"),
            ACCEPT,
        ),
        Hostile(
            "png-grey-alpha",
            "alpha.png",
            _save(Image.fromarray(scan_pixels()).convert("LA"), "PNG"),
            ACCEPT,
        ),
        Hostile(
            "png-1-bit",
            "bilevel.png",
            _save(Image.fromarray(scan_pixels()).convert("1"), "PNG"),
            ACCEPT,
        ),
        Hostile("png-animated", "cine.png", _animated_png(), ACCEPT),
        Hostile("tiff-multipage", "cine.tif", _multipage_tiff(), ACCEPT),
        Hostile("gif-animated", "cine.gif", _animated_gif(), REJECT, NOT_AN_IMAGE),
        # Pictures no ultrasound scan could be: refused with the shape named.
        Hostile("png-1x1", "dot.png", good_png(1, 1), REJECT, TOO_SMALL),
        Hostile(
            "png-extremely-wide", "wide.png", good_png(60_000, 1), REJECT, TOO_SMALL
        ),
        Hostile(
            "png-extremely-tall", "tall.png", good_png(1, 60_000), REJECT, TOO_SMALL
        ),
        Hostile("png-strip", "strip.png", good_png(2_000, 40), REJECT, BAD_SHAPE),
        Hostile("png-smallest-accepted", "small.png", good_png(32, 32), ACCEPT),
        Hostile("png-widest-accepted", "wide-ok.png", good_png(400, 40), ACCEPT),
        # Names that lie, and polyglots: the content decides.
        Hostile("jpeg-named-png", "really-a-jpeg.png", jpeg, ACCEPT),
        Hostile("png-named-dcm", "really-a-png.dcm", png, ACCEPT),
        Hostile(
            "png-html-polyglot",
            "polyglot.png",
            png + b"<html><script>alert(1)</script></html>",
            ACCEPT,
        ),
        Hostile(
            "jpeg-zip-polyglot", "polyglot.jpg", jpeg + _zip([("x.txt", b"hi")]), ACCEPT
        ),
        # File names.
        Hostile("very-long-name", "a" * 300 + ".png", png, ACCEPT),
        Hostile("non-ascii-name", "échographie_乳腺_😀.png", png, ACCEPT),
        Hostile("traversal-name", "../../../etc/cron.d/evil.png", png, ACCEPT),
        Hostile("html-name", "<img src=x onerror=alert(1)>.png", png, ACCEPT),
        Hostile("rtl-override-name", "scan\u202egnp.exe", png, ACCEPT),
        # DICOM.
        Hostile("dicom-good-16-bit", "us16.dcm", _dicom(pixels=grey16), ACCEPT),
        Hostile("dicom-no-pixels", "sr.dcm", _dicom(), REJECT, ("no pixel data",)),
        Hostile(
            "dicom-broken-header",
            "broken.dcm",
            b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff" + b"\xab" * 64,
            REJECT,
            CORRUPT + ("dicom",),
        ),
        Hostile(
            "dicom-short-pixel-data",
            "short.dcm",
            _dicom(rows=512, columns=512, pixel_bytes=b"\x10" * 100),
            REJECT,
            CORRUPT + ("dicom",),
        ),
        Hostile(
            "dicom-huge-dimensions",
            "huge.dcm",
            _dicom(rows=65_535, columns=65_535, pixel_bytes=b"\x10" * 128),
            REJECT,
            TOO_BIG,
        ),
        # Archives.
        Hostile("zip-bomb", "bomb.zip", _zip_bomb(), ARCHIVE, ARCHIVE_REASONS),
        Hostile(
            "zip-dot-dot",
            "traversal.zip",
            _zip([("../../../../tmp/pwned.png", png), ("good.png", png)]),
            ARCHIVE,
            ARCHIVE_REASONS,
        ),
        Hostile(
            "zip-absolute-path",
            "absolute.zip",
            _zip([("/etc/cron.d/pwned.png", png), ("good.png", png)]),
            ARCHIVE,
            ARCHIVE_REASONS,
        ),
        Hostile(
            "zip-symlink", "links.zip", _zip_with_symlink(), ARCHIVE, ARCHIVE_REASONS
        ),
        Hostile(
            "zip-encrypted",
            "locked.zip",
            _zip_encrypted_flag(),
            ARCHIVE,
            ARCHIVE_REASONS,
        ),
        Hostile(
            "zip-nested-deep", "nested.zip", _nested_zip(6), ARCHIVE, ARCHIVE_REASONS
        ),
        Hostile(
            "zip-truncated",
            "cut.zip",
            _zip([("good.png", png)])[:-30],
            ARCHIVE,
            ARCHIVE_REASONS + CORRUPT,
        ),
        Hostile(
            "tar-symlink-and-dot-dot",
            "links.tar",
            _tar_with_symlink(),
            ARCHIVE,
            ARCHIVE_REASONS + NOT_AN_IMAGE + ("tar",),
        ),
    ]
    return tuple(items)


def by_kind(kind: str) -> Hostile:
    return next(item for item in build() if item.kind == kind)

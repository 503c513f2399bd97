"""Files the ingestion tests upload: DICOM built with pydicom, zips built in memory."""

from __future__ import annotations

import io
import stat
import zipfile
from collections.abc import Iterable

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

# Smooth gradients: lossy JPEG keeps them close to the original.
_Y, _X = np.mgrid[0:48, 0:64]
GREY = ((_X * 3 + _Y * 2) % 256).astype(np.uint8)
RGB = np.stack([GREY, 255 - GREY, (_Y * 5 % 256).astype(np.uint8)], axis=-1)


def png(
    width: int = 64, height: int = 48, *, value: int = 128, mode: str = "L"
) -> bytes:
    """A PNG whose bytes differ with `value` (so each is a different image)."""
    array = np.full((height, width), value, np.uint8)
    array[0, 0] = (value + 1) % 256
    image = Image.fromarray(array)
    if mode != "L":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def dicom(
    pixels: np.ndarray | None = GREY,
    *,
    photometric: str = "MONOCHROME2",
    frames: int = 1,
    transfer_syntax: str = "explicit",
    patient_id: str = "H-0001",
    patient_name: str = "Example^Jane",
    birth_date: str = "19700101",
    study_uid: str | None = None,
    accession: str = "ACC1",
    study_date: str = "20260105",
    spacing: tuple[float, float] | None = (0.1, 0.12),
) -> bytes:
    """An ultrasound DICOM file. transfer_syntax: explicit, rle or jpeg (baseline)."""
    meta = FileMetaDataset()
    sop_class = (
        UltrasoundMultiFrameImageStorage if frames > 1 else UltrasoundImageStorage
    )
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientBirthDate = birth_date
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.AccessionNumber = accession
    ds.StudyDate = study_date
    if spacing:
        ds.PixelSpacing = list(spacing)
    if pixels is not None:
        colour = photometric != "MONOCHROME2"
        shape = pixels.shape[1:] if frames > 1 else pixels.shape
        ds.Rows, ds.Columns = shape[0], shape[1]
        ds.SamplesPerPixel = 3 if colour else 1
        ds.PhotometricInterpretation = photometric
        if colour:
            ds.PlanarConfiguration = 0
        ds.BitsAllocated = ds.BitsStored = pixels.dtype.itemsize * 8
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 0
        if frames > 1:
            ds.NumberOfFrames = frames
        if transfer_syntax == "jpeg":
            stack = pixels if frames > 1 else pixels[None]
            ds.PixelData = encapsulate([_jpeg(frame) for frame in stack])
            ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
            if colour:
                ds.PhotometricInterpretation = "YBR_FULL_422"
            ds.LossyImageCompression = "01"
        else:
            ds.PixelData = pixels.tobytes()
            if transfer_syntax == "rle":
                ds.compress(RLELossless, pixels)
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _jpeg(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def zip_of(
    members: Iterable[tuple[str, bytes]],
    *,
    compression: int = zipfile.ZIP_DEFLATED,
    symlinks: Iterable[tuple[str, str]] = (),
) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, content in members:
            archive.writestr(zipfile.ZipInfo(name), content, compress_type=compression)
        for name, target in symlinks:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()

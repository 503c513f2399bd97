"""Synthetic ultrasound DICOM instances, built with pydicom, for benchmarks and tests.

One builder for every caller that needs a scan in DICOM form (the DICOM benchmark, the
decoder's, ingestion's and the DICOM network's tests), so that what a "well-formed
ultrasound instance" means is written once. Tooling: the product never imports it.
"""

from __future__ import annotations

import io
from typing import Any

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

TRANSFER_SYNTAXES = ("explicit", "rle", "jpeg")


def ultrasound_dataset(
    pixels: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    frames: int = 1,
    transfer_syntax: str = "explicit",
    patient_id: str = "H-0001",
    patient_name: str = "Example^Jane",
    birth_date: str | None = "19700101",
    study_uid: str | None = None,
    series_uid: str | None = None,
    instance_number: int | None = None,
    accession: str = "ACC1",
    study_date: str = "20260105",
    spacing: tuple[float, float] | None = (0.1, 0.12),
    manufacturer: str | None = None,
    model_name: str | None = None,
) -> Dataset:
    """An ultrasound instance: a patient, a study, a series and the pixels, if any.

    pixels: rows x columns (grey) or rows x columns x 3, with a leading frame axis when
    frames > 1; the dtype's size gives the bits (uint8: 8, uint16: 16). Any photometric
    interpretation other than MONOCHROME2 has three samples per pixel.
    transfer_syntax: explicit (VR little endian), rle (lossless) or jpeg (baseline,
    quality 95; colour becomes YBR_FULL_422, as a scanner writes it).
    manufacturer, model_name: the scanner (Manufacturer, Manufacturer's Model Name).
    birth_date, series_uid, instance_number, spacing, manufacturer, model_name: None
    leaves the element out
    (a new series UID is made when none is given).
    """
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"transfer_syntax must be one of {TRANSFER_SYNTAXES}")
    sop_class = (
        UltrasoundMultiFrameImageStorage if frames > 1 else UltrasoundImageStorage
    )
    meta = FileMetaDataset()
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
    if birth_date is not None:
        ds.PatientBirthDate = birth_date
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    if instance_number is not None:
        ds.InstanceNumber = instance_number
    ds.AccessionNumber = accession
    ds.StudyDate = study_date
    if spacing:
        ds.PixelSpacing = list(spacing)
    if manufacturer is not None:
        ds.Manufacturer = manufacturer
    if model_name is not None:
        ds.ManufacturerModelName = model_name
    if pixels is not None:
        _set_pixels(ds, pixels, photometric, frames, transfer_syntax)
    return ds


def _set_pixels(
    ds: Dataset,
    pixels: np.ndarray,
    photometric: str,
    frames: int,
    transfer_syntax: str,
) -> None:
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
        return
    ds.PixelData = pixels.tobytes()
    if transfer_syntax == "rle":
        ds.compress(RLELossless, pixels)


def _jpeg(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def dicom_bytes(ds: Dataset) -> bytes:
    """The dataset as a DICOM file (preamble, file meta, dataset)."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def ultrasound_dicom(pixels: np.ndarray | None, **options: Any) -> bytes:
    """An ultrasound DICOM file; options as for `ultrasound_dataset`."""
    return dicom_bytes(ultrasound_dataset(pixels, **options))

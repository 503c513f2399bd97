"""An analysis as DICOM objects a PACS stores and shows: SEG, SR and a secondary capture.

Per analysed scan:

- **SEG** (binary): the lesion mask, one segment, referencing the source image (its
  first frame for a cine clip, the frame the model analysed).
- **Comprehensive SR** (TID 1500 measurement report): predicted class, calibrated
  probabilities, the out-of-distribution "not reliable" flag and score where the analysis
  has them, the lesion (referencing the SEG segment) with its area in mm² when the pixel
  spacing is known, the bounding box as a polyline on the source image, the model's name
  and version as the algorithm and the device observer, and, once a radiologist has
  signed, their reading (label, BI-RADS category) with the SR marked verified by them.
  Where a reader grouped the scan into a lesion of its study (portal.clinical.models.
  Lesion), the lesion group is tracked as that lesion ("lesion B", one tracking UID in
  the SRs of all its images) and carries the lesion's result: its most suspicious
  image's calibrated malignant probability, referencing that image.
- **Secondary capture**: the scan with the lesion outline burned in, for viewers that
  show neither SEG nor SR.

A withheld scan (the gate found it is not a breast ultrasound image) gets only the SR,
whose one measurement group says so with the gate's score: no SEG, no outline, no
class or probability.

UIDs are derived, not random: the same analysis always gives the same UIDs, so a
download and a send are the same instances and sending twice replaces rather than
duplicates. They come from the scan's random UUID (unique across installations) plus
what the object is, under DICOM_UID_ROOT or else 2.25. A lesion's tracking UID comes
from the lesion's own UUID; the SR of a grouped scan also names its lesion and the
analysis that drives the lesion's result, so that regrouping makes a new SR instance
rather than changing one a PACS already holds.

Scans uploaded as PNG/JPEG have no DICOM source to reference. For them a secondary
capture of the original image is made and becomes the source: its SOP instance UID is
derived from the scan's UUID, its series and study UIDs from the UUID of the study's first
scan, so every scan of a study shares one study and one series, and the source SC goes
along with the results (download and send), which keeps every reference resolvable.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import io
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from django.conf import settings
from django.core.files.storage import default_storage
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    generate_uid,
)

from ml.decode import decode_image
from ml.render import mask_overlay, read_mask
from portal.analyses.models import Analysis
from portal.analyses.selectors import StudyMalignancy, scan_lesion_malignancy
from portal.clinical.models import Lesion, Scan

logger = logging.getLogger(__name__)

MANUFACTURER = "BUSAI"
MODEL_NAME = "BUSAI breast ultrasound analysis"
DEVICE_SERIAL = "1"
SERIES_NUMBERS = {
    "source": 900,
    "seg": 901,
    "sr": 902,
    "overlay": 903,
    "reading": 904,
}
# Concepts that have no standard code: a private coding scheme (99 prefix, PS3.16 8.2).
SCHEME = "99BUSAI"
NOT_RELIABLE = hd.sr.CodedConcept(
    "OOD", SCHEME, "Input unlike the model's training data"
)
OOD_SCORE = hd.sr.CodedConcept("OODSCORE", SCHEME, "Out-of-distribution score")
# The gate's verdict on a withheld scan: the SR says why there is no result.
NOT_ANALYSED = hd.sr.CodedConcept(
    "NOTBUS", SCHEME, "Not analysed: not a breast ultrasound image"
)
GATE_SCORE = hd.sr.CodedConcept("GATESCORE", SCHEME, "Ultrasound gate score")
CLASS_CODES = {
    "normal": codes.SCT.Normal,
    "benign": codes.SCT.Benign,
    "malignant": codes.SCT.Malignant,
}
# Each class's probability is its own concept, so that a reader (dsrdump, a viewer)
# shows which class a number is for; DICOM has no standard code for a per-class
# probability of this model's classes.
CLASS_PROBABILITY_CODES = {
    label: hd.sr.CodedConcept(f"P-{label.upper()}", SCHEME, f"Probability of {label}")
    for label in CLASS_CODES
}
# BI-RADS assessment categories: the SNOMED CT codes of DICOM CID 6026 (Breast
# Assessment; meanings shortened to the 64 characters of an LO), DCM 111125 for
# category 6. SNOMED CT has no code for the ultrasound
# subcategories 4A/4B/4C: they are coded as category 4, and the subcategory is a second
# evaluation in the private scheme (BIRADS_SUBCATEGORY).
BIRADS_CODES = {
    "0": hd.sr.CodedConcept(
        "397138000",
        "SCT",
        "Mammography assessment (Category 0) - Need additional imaging",
    ),
    "1": hd.sr.CodedConcept(
        "397140005", "SCT", "Mammography assessment (Category 1) - Negative"
    ),
    "2": hd.sr.CodedConcept(
        "397141009", "SCT", "Mammography assessment (Category 2) - Benign finding"
    ),
    "3": hd.sr.CodedConcept(
        "397143007",
        "SCT",
        "Mammography assessment (Category 3) - Probably benign finding",
    ),
    "5": hd.sr.CodedConcept(
        "397145000",
        "SCT",
        "Mammography assessment (Category 5) - Highly suggestive",
    ),
    "6": hd.sr.CodedConcept("111125", "DCM", "Known biopsy proven malignancy"),
}
_CATEGORY_4 = hd.sr.CodedConcept(
    "397144001",
    "SCT",
    "Mammography assessment (Category 4) - Suspicious abnormality",
)
BIRADS_CODES |= {"4A": _CATEGORY_4, "4B": _CATEGORY_4, "4C": _CATEGORY_4}
BIRADS_SUBCATEGORY = hd.sr.CodedConcept(
    "BIRADS-SUB", SCHEME, "BI-RADS category 4 subcategory"
)
# The result of the reader's lesion, in the lesion group of each of its images' SRs:
# a probability of its own (not the image's P-MALIGNANT), and whether this image is the
# one that drives it (the measurement references that image).
LESION_MALIGNANT = hd.sr.CodedConcept(
    "P-LESION-MAL", SCHEME, "Lesion probability of malignant"
)
LESION_DRIVER = hd.sr.CodedConcept(
    "LESION-DRIVER", SCHEME, "Most suspicious image of the lesion"
)
# The lesion's biopsy outcome where one is recorded (portal.clinical.models.Pathology),
# a finding of the lesion group: DCM "Pathology Results" = SCT Benign / Malignant.
BIOPSY_OUTCOME = codes.DCM.PathologyResults
# ml.study's rules as a measurement's Derivation (CID 3488) where one code says it.
RULE_DERIVATIONS = {"max": codes.SCT.Maximum}
# DICOM's Laterality (R/L) as SNOMED CT codes for the SR's finding site.
LATERALITY_CODES = {"R": codes.SCT.Right, "L": codes.SCT.Left}
PATIENT_AND_STUDY = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)
TYPE_2_PATIENT_AND_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)
# Fixed: changing it would change every UID the portal has ever written.
UID_NAMESPACE = uuid.UUID("6c1b8f52-3f0e-4c55-9a57-0d2f1c8b7e41")
KINDS = ("seg", "sr", "overlay", "source")


class ResultsUnavailable(ValueError):
    """The analysis has no results to write as DICOM; str() says why."""


def derived_uid(*parts: object) -> str:
    """A UID that is the same every time for the same parts (see the module docstring)."""
    name = "/".join(map(str, parts))
    if settings.DICOM_UID_ROOT:
        return str(generate_uid(f"{settings.DICOM_UID_ROOT}.", entropy_srcs=[name]))
    # A name-based (SHA-1) UUID as a 2.25 UID: ISO/IEC 9834-8, PS3.5 B.2.
    return f"2.25.{uuid.uuid5(UID_NAMESPACE, name).int}"


@dataclass
class DicomResults:
    """The DICOM objects of one analysis; `source` only when the scan was not DICOM;
    no `seg` or `overlay` for a withheld scan (its SR says why)."""

    seg: Dataset | None
    sr: Dataset
    overlay: Dataset | None
    source: Dataset | None = None
    names: dict[str, Dataset] = field(init=False)

    def __post_init__(self) -> None:
        candidates = {
            "seg": self.seg,
            "sr": self.sr,
            "overlay": self.overlay,
            "source": self.source,
        }
        self.names = {k: v for k, v in candidates.items() if v is not None}

    def datasets(self) -> list[Dataset]:
        """In sending order: what is referenced goes before what references it."""
        ordered = [self.source, self.seg, self.overlay, self.sr]
        return [dataset for dataset in ordered if dataset is not None]


@dataclass(frozen=True)
class ReportedLesion:
    """The reader's lesion a scan shows, as the scan's SR reports it."""

    label: str
    tracking_uid: str
    # None: no image of the lesion has a result (each is withheld or unfinished).
    result: StudyMalignancy | None = None
    # The source image of the result's most suspicious image, and the version of the
    # model that scored it.
    driver: Dataset | None = None
    driver_model_version: str = ""
    driver_is_this_scan: bool = False
    # Its biopsy outcome (benign / malignant), "" where none is recorded.
    pathology: str = ""


def encode(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def analysis_results(*, analysis: Analysis, review: Any = None) -> DicomResults:
    """Build the objects of a succeeded analysis (with a signed review's reading)."""
    if analysis.status != Analysis.Status.SUCCEEDED:
        raise ResultsUnavailable(
            f"analysis {analysis.pk} is {analysis.status}; only finished analyses "
            "have results"
        )
    if not analysis.withheld and not analysis.mask:
        raise ResultsUnavailable(f"analysis {analysis.pk} has no lesion mask stored")
    scan = analysis.scan
    with default_storage.open(scan.original.name, "rb") as stored:
        original = stored.read()
    image = decode_image(original, max_pixels=settings.UPLOAD_MAX_PIXELS).pixels
    source, synthesized = _source_dataset(scan, original, image)
    if analysis.withheld:
        # Not a breast ultrasound image: an SR that says so with the gate's score, and
        # no SEG, no outline and no lesion group.
        return DicomResults(
            seg=None,
            sr=_report(analysis, source, None, review, None),
            overlay=None,
            source=source if synthesized else None,
        )
    mask = _lesion_mask(analysis, image.shape[:2])
    # Once signed, the reading's outline (the reader's mask, or "no lesion") is the
    # one sent; the model's stays in the portal as the model's.
    reader = _reader_mask(review, image.shape[:2])
    if reader is not None:
        mask = reader
        whose = f"reader-{review.pk}"
        outline_title = f"Lesion outline (radiologist, reading v{review.version})"
    else:
        whose = analysis.model_version
        outline_title = f"Lesion outline ({analysis.model_version})"
    seg = _segmentation(
        analysis, source, mask, reader=review if reader is not None else None
    )
    overlay = _secondary_capture(
        reference=source,
        pixels=mask_overlay(image, mask),
        series_uid=derived_uid("overlay-series", scan.uuid),
        sop_uid=derived_uid("overlay", scan.uuid, whose),
        series_number=SERIES_NUMBERS["overlay"],
        description=outline_title,
        derived=True,
    )
    sr = _report(analysis, source, seg, review, _reported_lesion(analysis, source))
    return DicomResults(
        seg=seg, sr=sr, overlay=overlay, source=source if synthesized else None
    )


# --- the source image ----------------------------------------------------------------


def _source_dataset(
    scan: Scan, original: bytes, image: np.ndarray
) -> tuple[Dataset, bool]:
    """The scan's own DICOM dataset, or a secondary capture made of its image.

    Returns (dataset, synthesized).
    """
    if scan.format == "DICOM":
        dataset = pydicom.dcmread(io.BytesIO(original))
        if _has_uids(dataset, scan):
            # Type 2 attributes that the objects derived from it must carry, empty if
            # the scanner left them out.
            for name in TYPE_2_PATIENT_AND_STUDY:
                if name not in dataset:
                    setattr(dataset, name, "")
            return dataset, False
    reference, series_uid, sop_uid = _portal_source(scan)
    source = _secondary_capture(
        reference=reference,
        pixels=image,
        series_uid=series_uid,
        sop_uid=sop_uid,
        series_number=SERIES_NUMBERS["source"],
        description="Uploaded ultrasound image",
        derived=False,
    )
    if scan.pixel_spacing_row_mm and scan.pixel_spacing_col_mm:
        source.PixelSpacing = [scan.pixel_spacing_row_mm, scan.pixel_spacing_col_mm]
    return source, True


def _source_header(scan: Scan) -> Dataset:
    """The identity (SOP class and instance, series, study) of the scan's source, as
    _source_dataset makes it, without its pixels: an SR referencing another image of
    the study needs no more."""
    if scan.format == "DICOM":
        with default_storage.open(scan.original.name, "rb") as stored:
            dataset = pydicom.dcmread(stored, stop_before_pixels=True)
        if _has_uids(dataset, scan):
            return dataset
    header, series_uid, sop_uid = _portal_source(scan)
    header.SOPClassUID = SecondaryCaptureImageStorage
    header.SOPInstanceUID = sop_uid
    header.SeriesInstanceUID = series_uid
    # What _secondary_capture gives that capture (its size from the scan's).
    header.Modality = "OT"
    header.Rows, header.Columns = scan.height, scan.width
    header.SamplesPerPixel = 3
    return header


def _has_uids(dataset: Dataset, scan: Scan) -> bool:
    if all(
        dataset.get(name)
        for name in (
            "SOPClassUID",
            "SOPInstanceUID",
            "StudyInstanceUID",
            "SeriesInstanceUID",
        )
    ):
        return True
    logger.warning(
        "scan %s: its DICOM file lacks UIDs; results reference a secondary capture",
        scan.pk,
    )
    return False


def _portal_source(scan: Scan) -> tuple[Dataset, str, str]:
    """For a scan that is no DICOM image of its own: the patient and study of the
    secondary capture the portal makes its source, and that capture's series and SOP
    instance UIDs."""
    study = scan.study
    patient = study.patient
    first_scan = study.scans.order_by("uploaded_at", "pk").first() or scan
    reference = Dataset()
    reference.PatientName = _single_component_name(patient.name)
    reference.PatientID = patient.identifier
    reference.PatientBirthDate = (
        patient.birth_date.strftime("%Y%m%d") if patient.birth_date else ""
    )
    reference.PatientSex = ""
    reference.StudyInstanceUID = study.study_instance_uid or derived_uid(
        "study", first_scan.uuid
    )
    reference.StudyDate = study.study_date.strftime("%Y%m%d")
    reference.StudyTime = ""
    reference.StudyID = str(study.pk)
    reference.AccessionNumber = study.accession_number
    reference.ReferringPhysicianName = ""
    return (
        reference,
        derived_uid("source-series", first_scan.uuid),
        derived_uid("source", scan.uuid),
    )


def _secondary_capture(
    *,
    reference: Dataset,
    pixels: np.ndarray,
    series_uid: str,
    sop_uid: str,
    series_number: int,
    description: str,
    derived: bool,
) -> Dataset:
    """An RGB secondary capture image in the reference's patient and study."""
    now = datetime.datetime.now(datetime.UTC)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    for name in PATIENT_AND_STUDY:
        if name in reference:
            setattr(ds, name, reference.get(name))
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.InstanceNumber = 1
    ds.SeriesDescription = description[:64]
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.Manufacturer = MANUFACTURER
    ds.ImageType = ["DERIVED" if derived else "ORIGINAL", "SECONDARY"]
    ds.BurnedInAnnotation = "YES" if derived else "NO"
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    _copy_anatomy(reference, ds)
    ds.PatientOrientation = reference.get("PatientOrientation", "")
    if derived and "PixelSpacing" in reference:
        # Same pixel grid as the source: the same millimetres per pixel.
        ds.PixelSpacing = reference.PixelSpacing
    rgb = np.ascontiguousarray(pixels, dtype=np.uint8)
    ds.Rows, ds.Columns = int(rgb.shape[0]), int(rgb.shape[1])
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = rgb.tobytes()
    if derived and "SOPInstanceUID" in reference:
        source = Dataset()
        source.ReferencedSOPClassUID = reference.SOPClassUID
        source.ReferencedSOPInstanceUID = reference.SOPInstanceUID
        ds.SourceImageSequence = [source]
    return ds


def _reported_lesion(analysis: Analysis, source: Dataset) -> ReportedLesion | None:
    """The reader's lesion the analysed scan shows, with the lesion's result as the
    study page gives it (analyses.selectors.lesion_malignancies); None for a scan in no
    lesion."""
    scan = analysis.scan
    grouped = scan_lesion_malignancy(scan=scan)
    if grouped is None:
        return None
    lesion = Lesion.objects.only("uuid", "label").get(pk=grouped.lesion_id)
    reported = ReportedLesion(
        label=lesion.label,
        # The lesion's own identity, neither the scan's nor the analysis's: the same
        # in every SR of every image of the lesion, whatever model made it.
        tracking_uid=derived_uid("lesion-tracking", lesion.uuid),
        pathology=grouped.pathology,
    )
    result = grouped.result
    if result is None:
        return reported
    if result.scan_id == scan.pk:
        driver = source
    else:
        driver = _source_header(
            Scan.objects.select_related("study__patient").get(pk=result.scan_id)
        )
    if result.analysis_id == analysis.pk:
        version = analysis.model_version
    else:
        version = Analysis.objects.values_list("model_version", flat=True).get(
            pk=result.analysis_id
        )
    return dataclasses.replace(
        reported,
        result=result,
        driver=driver,
        driver_model_version=version,
        driver_is_this_scan=result.scan_id == scan.pk,
    )


def _reader_mask(review: Any, shape: tuple[int, int]) -> np.ndarray | None:
    """A signed reading's own outline at the image's size, or None (the model's stands)."""
    from portal.review.selectors import signed_outline_mask

    if review is None or review.signed_at is None:
        return None
    mask = signed_outline_mask(review)
    if mask is not None and mask.shape != shape:
        raise ResultsUnavailable(
            f"review {review.pk}: its outline is {mask.shape[1]}x{mask.shape[0]}, the "
            f"scan {shape[1]}x{shape[0]}"
        )
    return mask


def _laterality(source: Dataset) -> str:
    """The source's side, "R" or "L" (its Image Laterality when the series does not
    say), or "" when unknown: never guessed."""
    laterality = str(source.get("Laterality", "") or source.get("ImageLaterality", ""))
    return laterality if laterality in ("R", "L") else ""


def _copy_anatomy(source: Dataset, target: Dataset) -> None:
    """Laterality and body part, from the source to an object derived from it.

    Laterality (General Series, type 2C) is written empty when the source does not say
    (DICOM's "unknown"), never guessed; the image-level Image Laterality of a source
    counts as its laterality.
    """
    target.Laterality = _laterality(source)
    if source.get("BodyPartExamined"):
        target.BodyPartExamined = source.BodyPartExamined


def _lesion_mask(analysis: Analysis, shape: tuple[int, int]) -> np.ndarray:
    with default_storage.open(analysis.mask.name, "rb") as stored:
        mask = read_mask(stored.read())
    if mask.shape != shape:  # stored at the scan's size: anything else is a fault
        raise ResultsUnavailable(
            f"analysis {analysis.pk}: its mask is {mask.shape[1]}x{mask.shape[0]}, the "
            f"scan {shape[1]}x{shape[0]}"
        )
    return mask


# --- SEG -----------------------------------------------------------------------------


def _algorithm(analysis: Analysis) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=MODEL_NAME,
        family=codes.DCM.ArtificialIntelligence,
        version=analysis.model_version,
    )


def _segmentation(
    analysis: Analysis, source: Dataset, mask: np.ndarray, *, reader: Any = None
) -> Dataset:
    """The lesion SEG: the model's (AUTOMATIC), or with ``reader`` the signed reading's
    outline (MANUAL, its own UIDs)."""
    stack = mask[None]
    whose = analysis.model_version if reader is None else f"reader-{reader.pk}"
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=(
            hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
            if reader is None
            else hd.seg.SegmentAlgorithmTypeValues.MANUAL
        ),
        algorithm_identification=_algorithm(analysis) if reader is None else None,
        tracking_uid=derived_uid("lesion", analysis.scan.uuid, whose),
        tracking_id="Lesion",
    )
    # Without a frame of reference (ultrasound, secondary capture) the SEG lies on the
    # source's pixel grid. Its Pixel Measures carry the source's Pixel Spacing so that
    # viewers can measure on it, and no Slice Thickness: since CP 1426 the Pixel
    # Measures macro requires Slice Thickness in a SEG only when a Frame of Reference is
    # present, and a 2D ultrasound image has no thickness to copy (highdicom 0.28's
    # reader is stricter than the standard here and refuses such a SEG; dciodvfy, the
    # standard's checker, accepts it).
    # Its own elements (the pixel data shared, never changed): what is changed below must
    # not change the source the SR references.
    grid = Dataset()
    for element in source:
        grid.add(element if element.keyword == "PixelData" else copy.deepcopy(element))
    if hasattr(source, "file_meta"):
        grid.file_meta = source.file_meta
    # highdicom also refuses a multi-frame source without a frame of reference: it is
    # shown the analysed first frame as a single-frame image, and the SEG's reference
    # then names that frame.
    frames = int(source.get("NumberOfFrames", 1) or 1)
    for name in ("PixelSpacing", "ImagerPixelSpacing"):
        if name in grid:
            delattr(grid, name)
    if frames > 1:
        # ... and as an image of a single-frame class: highdicom reads every
        # multi-frame class as an enhanced one, with functional groups a cine lacks.
        grid.NumberOfFrames = 1
        grid.SOPClassUID = (
            UltrasoundImageStorage
            if source.Modality == "US"
            else SecondaryCaptureImageStorage
        )
    seg = hd.seg.Segmentation(
        source_images=[grid],
        pixel_array=stack.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=derived_uid("seg-series", analysis.scan.uuid),
        series_number=SERIES_NUMBERS["seg"],
        sop_instance_uid=derived_uid("seg", analysis.scan.uuid, whose),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        software_versions=analysis.model_version,
        device_serial_number=DEVICE_SERIAL,
        series_description=(
            f"Lesion segmentation ({analysis.model_version})"
            if reader is None
            else f"Lesion segmentation (radiologist v{reader.version})"
        )[:64],
        # An empty mask is a finding too ("no lesion"): keep its frame.
        omit_empty_frames=bool(mask.any()),
    )
    spacing = source.get("PixelSpacing")
    if spacing is not None and len(spacing) == 2:
        measures = Dataset()
        measures.PixelSpacing = list(spacing)
        seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence = [measures]
    # The SEG IOD takes the side as Image Laterality (General Image); its General
    # Series Laterality "may not be present" (dciodvfy). Unknown: left out.
    if laterality := _laterality(source):
        seg.ImageLaterality = laterality
    if source.get("BodyPartExamined"):
        seg.BodyPartExamined = source.BodyPartExamined
    # Type 2C (no Image Orientation (Patient) here): the source's, empty if unknown.
    seg.PatientOrientation = source.get("PatientOrientation", "")
    if frames > 1:
        references = [
            image
            for group in seg.PerFrameFunctionalGroupsSequence
            for derivation in group.get("DerivationImageSequence", [])
            for image in derivation.SourceImageSequence
        ]
        for image in references:
            image.ReferencedFrameNumber = 1
        references += [
            instance
            for series in seg.ReferencedSeriesSequence
            for instance in series.ReferencedInstanceSequence
        ]
        for image in references:
            image.ReferencedSOPClassUID = source.SOPClassUID
    return seg


# --- SR ------------------------------------------------------------------------------


def _single_component_name(name: str) -> str:
    """A free-text name as a DICOM PN: one component, marked so with a caret."""
    name = name.replace("\\", " ").strip()
    return name if "^" in name else f"{name}^"


def _person_name(user: Any) -> str:
    """The reader's name as a DICOM PN (Family^Given); an account with no name on record
    gives its username as a one-component name."""
    last, first = (user.last_name or "").strip(), (user.first_name or "").strip()
    if last or first:
        return f"{last}^{first}"[:64]
    return _single_component_name(user.get_username())


def _finding_sites(source: Dataset) -> list[hd.sr.FindingSite]:
    """The breast, with its side when the source says which: where the finding is."""
    return [
        hd.sr.FindingSite(
            anatomic_location=codes.SCT.Breast,
            laterality=LATERALITY_CODES.get(_laterality(source)),
        )
    ]


def _report(
    analysis: Analysis,
    source: Dataset,
    seg: Dataset | None,
    review: Any,
    lesion: ReportedLesion | None,
) -> Dataset:
    scan = analysis.scan
    algorithm = hd.sr.AlgorithmIdentification(
        name=MODEL_NAME, version=analysis.model_version, manufacturer=MANUFACTURER
    )
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid("device", analysis.model_version),
            name=MODEL_NAME,
            manufacturer_name=MANUFACTURER,
            model_name=analysis.model_version[:64],
        ),
    )
    person = None
    if review is not None:
        person = hd.sr.ObserverContext(
            observer_type=codes.DCM.Person,
            observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
                name=_person_name(review.author)
            ),
        )
    context = hd.sr.ObservationContext(
        observer_person_context=person, observer_device_context=device
    )
    source_for_group = hd.sr.SourceImageForMeasurementGroup.from_source_image(source)
    sites = _finding_sites(source)
    if seg is None:  # withheld: the gate's verdict is the whole model output
        groups: list[Any] = [
            _withheld_group(analysis, algorithm, source_for_group, sites)
        ]
    else:
        groups = [
            _model_output_group(analysis, algorithm, source_for_group, sites),
            _lesion_group(analysis, algorithm, source, seg, sites, lesion),
        ]
        bbox_group = _bbox_group(analysis, algorithm, source, sites)
        if bbox_group is not None:
            groups.append(bbox_group)
    if review is not None:
        groups.append(_reading_group(analysis, review, source_for_group, sites))
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=codes.SCT.UltrasonographyOfBreast,
        imaging_measurements=groups,
    )
    version = f"{review.pk}" if review is not None else "model"
    identity: tuple[object, ...] = ("sr", scan.uuid, analysis.model_version, version)
    evidence = [source] if seg is None else [source, seg]
    if lesion is not None:
        # What the lesion group says is part of the instance: regrouping the scan, or
        # another image becoming the lesion's most suspicious, gives a new SR (as an
        # amended reading does), never a changed one under a UID a PACS already holds.
        driver = lesion.result.analysis_id if lesion.result else "none"
        identity += ("lesion", lesion.tracking_uid, driver)
        if lesion.pathology:  # recording, changing or clearing it: a new instance
            identity += ("biopsy", lesion.pathology)
        if lesion.driver is not None:
            evidence.append(lesion.driver)  # another image of the study, or the source
    signed = review is not None
    # The reader's SR is the reader's document: a series of its own, not the AI's.
    series = ("reading-series", "reading") if signed else ("sr-series", "sr")
    return hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=derived_uid(series[0], scan.uuid),
        series_number=SERIES_NUMBERS[series[1]],
        sop_instance_uid=derived_uid(*identity),
        instance_number=review.version + 1 if signed else 1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=signed,
        is_verified=signed,
        verifying_observer_name=_person_name(review.author) if signed else None,
        verifying_organization=MANUFACTURER if signed else None,
        series_description=(
            f"Radiologist reading ({analysis.model_version} analysis)"
            if signed
            else f"AI analysis ({analysis.model_version})"
        )[:64],
    )


def _tracking(analysis: Analysis, what: str, label: str) -> hd.sr.TrackingIdentifier:
    return hd.sr.TrackingIdentifier(
        uid=derived_uid("tracking", what, analysis.scan.uuid, analysis.model_version),
        identifier=label,
    )


def _model_output_group(
    analysis: Analysis, algorithm: Any, source: Any, sites: Any
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    evaluations = []
    in_distribution = getattr(analysis, "in_distribution", None)
    if in_distribution is not None:
        evaluations.append(
            hd.sr.QualitativeEvaluation(
                name=NOT_RELIABLE,
                value=codes.SCT.No if in_distribution else codes.SCT.Yes,
            )
        )
    measurements = [
        hd.sr.Measurement(
            name=CLASS_PROBABILITY_CODES[label],
            value=float(probability),
            unit=codes.UCUM.NoUnits,
            algorithm_id=algorithm,
        )
        for label, probability in sorted((analysis.probabilities or {}).items())
        if label in CLASS_CODES
    ]
    ood_score = getattr(analysis, "ood_score", None)
    if ood_score is not None:
        measurements.append(
            hd.sr.Measurement(
                name=OOD_SCORE,
                value=float(ood_score),
                unit=codes.UCUM.NoUnits,
                algorithm_id=algorithm,
            )
        )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(analysis, "output", "Model output"),
        algorithm_id=algorithm,
        # TID 1501's Finding is the predicted class.
        finding_type=CLASS_CODES[analysis.label],
        finding_sites=sites,
        qualitative_evaluations=evaluations or None,
        measurements=measurements,
        source_images=[source],
    )


def _withheld_group(
    analysis: Analysis, algorithm: Any, source: Any, sites: Any
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """Why there is no result: the gate found this is not a breast ultrasound image."""
    measurements = []
    if analysis.gate_score is not None:
        measurements.append(
            hd.sr.Measurement(
                name=GATE_SCORE,
                value=float(analysis.gate_score),
                unit=codes.UCUM.NoUnits,
                algorithm_id=algorithm,
            )
        )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(analysis, "output", "Model output"),
        algorithm_id=algorithm,
        finding_type=NOT_ANALYSED,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=NOT_ANALYSED, value=codes.SCT.Yes)
        ],
        measurements=measurements or None,
        source_images=[source],
        finding_sites=sites,
    )


def _lesion_group(
    analysis: Analysis,
    algorithm: Any,
    source: Dataset,
    seg: Dataset,
    sites: Any,
    lesion: ReportedLesion | None,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """The lesion the analysis outlined (TID 1410): per analysis, or, where a reader
    grouped the scan into a lesion, tracked as that lesion and with its result."""
    scan = analysis.scan
    measurements = []
    area = scan.area_mm2(analysis.lesion_area_fraction)
    if area is not None:
        measurements.append(
            hd.sr.Measurement(
                name=codes.SCT.Area,
                value=float(area),
                unit=codes.UCUM.SquareMillimeter,
                algorithm_id=algorithm,
            )
        )
    else:
        measurements.append(
            hd.sr.Measurement(
                name=codes.SCT.Area,
                value=float(analysis.lesion_area_fraction or 0.0) * 100.0,
                unit=codes.UCUM.Percent,
                # Of the image, the pixel spacing being unknown.
                algorithm_id=algorithm,
            )
        )
    # Built by hand: highdicom's from_segmentation() looks for the segment in per-frame
    # groups, and a one-frame SEG keeps it in the shared ones.
    segment = hd.sr.ReferencedSegmentationFrame(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        frame_number=1,
        segment_number=1,
        source_image=_source_image(hd.sr.SourceImageForSegmentation, source),
    )
    # The Image Reference macro allows a Referenced Segment Number or a Referenced
    # Frame Number, not both (each is required only when the other is absent): the
    # segment number alone names it in a one-frame SEG.
    for item in segment:
        for reference in item.get("ReferencedSOPSequence", []):
            if "ReferencedSegmentNumber" in reference:
                reference.pop("ReferencedFrameNumber", None)
    evaluations = []
    if lesion is None:
        tracking = _tracking(analysis, "lesion", "Lesion")
    else:
        tracking = hd.sr.TrackingIdentifier(
            uid=lesion.tracking_uid, identifier=f"lesion {lesion.label}"
        )
        if lesion.result is not None and lesion.driver is not None:
            measurements.append(
                _lesion_malignancy(lesion, lesion.result, lesion.driver)
            )
            evaluations.append(
                hd.sr.QualitativeEvaluation(
                    name=LESION_DRIVER,
                    value=codes.SCT.Yes if lesion.driver_is_this_scan else codes.SCT.No,
                )
            )
        if lesion.pathology:
            evaluations.append(
                hd.sr.QualitativeEvaluation(
                    name=BIOPSY_OUTCOME, value=CLASS_CODES[lesion.pathology]
                )
            )
    return _planar_lesion_finding(
        algorithm,
        tracking,
        referenced_segment=segment,
        measurements=measurements,
        qualitative_evaluations=evaluations or None,
        finding_sites=sites,
    )


def _lesion_malignancy(
    lesion: ReportedLesion, result: StudyMalignancy, driver: Dataset
) -> hd.sr.Measurement:
    """The lesion's result, its source of measurement the image that drives it."""
    return hd.sr.Measurement(
        name=LESION_MALIGNANT,
        value=float(result.malignant),
        unit=codes.UCUM.NoUnits,
        derivation=RULE_DERIVATIONS.get(result.rule),
        referenced_images=[_source_image(hd.sr.SourceImageForMeasurement, driver)],
        algorithm_id=hd.sr.AlgorithmIdentification(
            name=MODEL_NAME,
            version=lesion.driver_model_version,
            manufacturer=MANUFACTURER,
        ),
    )


def _bbox_group(
    analysis: Analysis, algorithm: Any, source: Dataset, sites: Any
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | None:
    if not analysis.bbox:
        return None
    x_min, y_min, x_max, y_max = (float(v) for v in analysis.bbox)
    # Closed polyline through the corners, in image pixel coordinates (column, row).
    corners = np.array(
        [
            [x_min, y_min],
            [x_max, y_min],
            [x_max, y_max],
            [x_min, y_max],
            [x_min, y_min],
        ],
        dtype=float,
    )
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=corners,
        source_image=_source_image(hd.sr.SourceImageForRegion, source),
    )
    return _planar_lesion_finding(
        algorithm,
        _tracking(analysis, "bbox", "Lesion bounding box"),
        referenced_region=region,
        finding_sites=sites,
    )


def _planar_lesion_finding(
    algorithm: Any, tracking: hd.sr.TrackingIdentifier, **content: Any
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """A TID 1410 group whose finding is the lesion, located by `content` (its
    referenced segment or region, with any measurements)."""
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        finding_type=codes.SCT.Lesion,
        algorithm_id=algorithm,
        **content,
    )


def _source_image(reference: Any, source: Dataset) -> Any:
    """`reference` (a highdicom SourceImageFor... class) for the source image, naming
    the frame the model analysed only for a multi-frame source."""
    frames = [1] if int(source.get("NumberOfFrames", 1) or 1) > 1 else None
    return reference.from_source_image(source, referenced_frame_numbers=frames)


def _reading_group(
    analysis: Analysis, review: Any, source: Any, sites: Any
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    evaluations = [
        hd.sr.QualitativeEvaluation(
            name=codes.DCM.AssessmentCategory, value=BIRADS_CODES[review.birads]
        ),
    ]
    if review.birads.startswith("4") and len(review.birads) == 2:
        evaluations.append(
            hd.sr.QualitativeEvaluation(
                name=BIRADS_SUBCATEGORY,
                value=hd.sr.CodedConcept(
                    f"BIRADS-{review.birads}", SCHEME, f"BI-RADS {review.birads}"
                ),
            )
        )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(
            analysis, f"reading-{review.pk}", f"Radiologist reading v{review.version}"
        ),
        finding_type=CLASS_CODES[review.label],
        finding_sites=sites,
        qualitative_evaluations=evaluations,
        source_images=[source],
    )

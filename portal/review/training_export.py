"""The site's signed scans as a training source, in the format of ``shared/data/<source>/``.

``images/`` and ``masks/`` (PNG at the scan's size), ``MANIFEST.csv`` (``path, class,
patient, mask_path, scanner, pixel_size, label_origin, segmentation, width, height``) and a
README with provenance and counts. ml reads it with its one manifest reader
(``ml.training.sources.register_source``).

De-identified: the patient column and every file name are keyed hashes (HMAC-SHA256 with
the site's TRAINING_EXPORT_KEY) of the patient identifier and of the scan's random uuid;
no name, identifier, accession number or date goes into a file or a file name, and the
images are decoded pixels written as PNG (no DICOM header travels). Text burned into the
pixels by a scanner is not removed: the README says so.

Ground truth per scan, from its current signed review:
- class: the biopsy outcome of the scan's lesion where one is recorded, else the study's
  (``label_origin`` pathology, either way), else the reader's signed label (``reader``):
  review.selectors.with_ground_truth, the site calibration's rule too;
- outline: the reader's corrected mask (``segmentation`` reader), an empty mask where the
  reader said "no lesion" or read the scan normal (``no_lesion``), else none (``none``:
  no mask file, the row is used for classification only; the model's own outline is never
  exported as ground truth).
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import hmac
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.core.files.storage import default_storage
from django.utils import timezone
from PIL import Image

from ml.decode import decode_image, to_rgb
from ml.render import read_mask
from portal.audit.models import AccessRecord
from portal.clinical.models import Scan
from portal.review.models import OutlineState, Review
from portal.review.selectors import (
    LESION_BIOPSY,
    READER,
    current_signed_reviews,
    with_ground_truth,
)

logger = logging.getLogger(__name__)

MANIFEST_FIELDS = (
    "path",
    "class",
    "patient",
    "mask_path",
    "scanner",
    "pixel_size",
    "label_origin",
    "segmentation",
    "width",
    "height",
)
CLASSES = ("normal", "benign", "malignant")


class ExportError(Exception):
    """The export cannot be made (no key, a folder that is not empty, ...)."""


@dataclass
class ExportSummary:
    out: Path
    rows: int = 0
    classes: Counter = field(default_factory=Counter)
    label_origins: Counter = field(default_factory=Counter)
    segmentation: Counter = field(default_factory=Counter)
    scanners: Counter = field(default_factory=Counter)
    patients: int = 0
    skipped_scanner: int = 0
    # Of the label_origin pathology rows, those whose outcome is their lesion's.
    from_lesion_pathology: int = 0


def pseudonym(key: str, kind: str, value: str, length: int = 16) -> str:
    """A keyed hash: the same value gives the same name, unreadable without the key."""
    digest = hmac.new(key.encode(), f"{kind}:{value}".encode(), hashlib.sha256)
    return digest.hexdigest()[:length]


def scanner_name(scan: Scan, content: bytes) -> str:
    """Manufacturer and model from a DICOM original; "unknown" for other formats.

    Stored on the scan since it was ingested; scans stored before that have the header
    read again."""
    if scan.format != "DICOM":
        return "unknown"
    if not scan.scanner.is_site:
        return scan.scanner.name
    import io

    import pydicom

    try:
        dataset = pydicom.dcmread(io.BytesIO(content), stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - it decoded when stored; a name is not worth failing
        return "unknown"
    parts = [
        str(getattr(dataset, "Manufacturer", "") or "").strip(),
        str(getattr(dataset, "ManufacturerModelName", "") or "").strip(),
    ]
    return " ".join(p for p in parts if p) or "unknown"


def _signed_reviews(since: datetime.date | None) -> Iterable[Review]:
    reviews = with_ground_truth(current_signed_reviews()).select_related(
        "scan__study__patient", "analysis"
    )
    if since is not None:
        start = timezone.make_aware(datetime.datetime.combine(since, datetime.time()))
        reviews = reviews.filter(signed_at__gte=start)
    return reviews.order_by("scan_id")


def _png(path: Path, pixels: np.ndarray) -> None:
    Image.fromarray(pixels).save(path, format="PNG")


def _record_export(scans: list[int], username: str) -> None:
    content_type = ContentType.objects.get_for_model(Scan)
    AccessRecord.objects.bulk_create(
        AccessRecord(
            user=None,
            username=username[:150],
            action=AccessRecord.Action.DOWNLOAD,
            content_type=content_type,
            object_id=str(pk),
            detail="training export",
            path="export://training-set",
        )
        for pk in scans
    )


def export_training_set(
    *,
    out: Path,
    since: datetime.date | None = None,
    scanners: tuple[str, ...] = (),
    key: str | None = None,
    username: str = "(export)",
) -> ExportSummary:
    """Write the current signed reviews' scans to ``out`` (a new or empty folder)."""
    key = settings.TRAINING_EXPORT_KEY if key is None else key
    if len(key) < 16:
        raise ExportError(
            "TRAINING_EXPORT_KEY must be set to a secret of at least 16 characters: "
            "the patient keys are keyed hashes of it."
        )
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} is not empty; export into a new folder.")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    wanted = tuple(s.strip().lower() for s in scanners if s.strip())
    summary = ExportSummary(out=out)
    rows, patients, exported = [], set(), []
    for review in _signed_reviews(since):
        scan = review.scan
        with default_storage.open(scan.original.name, "rb") as stored:
            content = stored.read()
        scanner = scanner_name(scan, content)
        if wanted and not any(w in scanner.lower() for w in wanted):
            summary.skipped_scanner += 1
            continue
        pixels = to_rgb(
            decode_image(content, max_pixels=settings.UPLOAD_MAX_PIXELS).pixels
        )
        name = pseudonym(key, "scan", str(scan.uuid))
        patient = pseudonym(key, "patient", scan.study.patient.identifier)
        label = review.truth
        origin = "reader" if review.truth_origin == READER else "pathology"
        mask, segmentation = _ground_truth_mask(review, label, pixels.shape[:2])
        image_path = f"images/{name}.png"
        _png(out / image_path, pixels)
        mask_path = ""
        if mask is not None:
            mask_path = f"masks/{name}.png"
            _png(out / mask_path, mask.astype(np.uint8) * 255)
        spacing = (scan.pixel_spacing_row_mm, scan.pixel_spacing_col_mm)
        rows.append(
            {
                "path": image_path,
                "class": label,
                "patient": patient,
                "mask_path": mask_path,
                "scanner": scanner,
                # Centimetres per pixel, as shared/data/breast-lesions-usg gives it.
                "pixel_size": (
                    f"{(spacing[0] + spacing[1]) / 20:.6g}"
                    if None not in spacing
                    else ""
                ),
                "label_origin": origin,
                "segmentation": segmentation,
                "width": pixels.shape[1],
                "height": pixels.shape[0],
            }
        )
        patients.add(patient)
        exported.append(scan.pk)
        summary.classes[label] += 1
        summary.label_origins[origin] += 1
        if review.truth_origin == LESION_BIOPSY:
            summary.from_lesion_pathology += 1
        summary.segmentation[segmentation] += 1
        summary.scanners[scanner] += 1
    rows.sort(key=lambda row: row["path"])  # no order that follows upload time
    with (out / "MANIFEST.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    summary.rows = len(rows)
    summary.patients = len(patients)
    (out / "README.md").write_text(_readme(summary, since=since, scanners=wanted))
    _record_export(exported, username)
    logger.info("training export: %d scans of %d patients", summary.rows, len(patients))
    return summary


def _ground_truth_mask(
    review: Review, label: str, shape: tuple[int, int]
) -> tuple[np.ndarray | None, str]:
    """The mask a row trains on and its ``segmentation`` value."""
    if review.outline_state == OutlineState.CORRECTED and label != "normal":
        with default_storage.open(review.outline.name, "rb") as stored:
            mask = read_mask(stored.read())
        if mask.shape != shape:
            raise ExportError(
                f"review {review.pk}: its outline is {mask.shape[1]}x{mask.shape[0]}, "
                f"the scan {shape[1]}x{shape[0]}"
            )
        return mask, "reader"
    if label == "normal":
        return np.zeros(shape, bool), "no_lesion"
    # A lesion with no outline the reader drew (or one the reader called "no lesion"
    # that pathology calls a lesion): classification only.
    return None, "none"


def _counts(counter: Counter) -> str:
    return (
        ", ".join(f"{name} {count}" for name, count in sorted(counter.items()))
        or "none"
    )


def _readme(
    summary: ExportSummary, *, since: datetime.date | None, scanners: tuple[str, ...]
) -> str:
    return f"""# Site training source

Exported from this site's breast-ultrasound portal by `python manage.py
export_training_set`: one row per scan with a current signed review (the latest signed
version; superseded readings are not exported){
        " signed on or after the date given" if since else ""
    }{"; scanners matching " + ", ".join(scanners) if scanners else ""}.

## Counts
- scans: {summary.rows}, patients: {summary.patients}
- class: {_counts(summary.classes)}
- label_origin: {_counts(summary.label_origins)}{
        f" (of the pathology rows, {summary.from_lesion_pathology} from the biopsy of "
        "the image's lesion, the rest from the study's)"
        if summary.from_lesion_pathology
        else ""
    }
- segmentation: {_counts(summary.segmentation)}
- scanner: {_counts(summary.scanners)}

## Columns (MANIFEST.csv)
- `path`: the image, `images/<key>.png`, RGB at the scan's size.
- `class`: normal / benign / malignant: the biopsy outcome of the image's lesion where
  recorded, else the study's, else the radiologist's signed label (`label_origin` says
  which: `pathology` for either biopsy outcome, `reader` for the signed label).
- `patient`: a pseudonymous key (HMAC-SHA256 of the hospital identifier with the site's
  export key): the same patient has the same key; it cannot be reversed without the key.
- `mask_path`: the lesion mask (`masks/<key>.png`, 0/255 at the image's size), empty when
  `segmentation` is `none`.
- `segmentation`: `reader` (the outline the radiologist drew or confirmed and signed),
  `no_lesion` (an empty mask: normal, or "no lesion" signed), `none` (no signed outline:
  use the row for classification only; the model's own outline is never exported).
- `scanner`: manufacturer and model from the DICOM header, `unknown` for other formats.
- `pixel_size`: centimetres per pixel (as shared/data/breast-lesions-usg), empty when
  unknown.

## De-identification
No names, identifiers, accession numbers or dates in any file or file name; images are
decoded pixels (no DICOM header). Text a scanner burned into the pixels is NOT removed:
check the images before they leave the site.
"""

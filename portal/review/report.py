"""The study report: one PDF with the patient, the study, every scan with its overlays,
the model's output and version, and the radiologist's signed review."""

from __future__ import annotations

import datetime
import io
import logging
from typing import Any

import numpy as np
from django.core.files.storage import default_storage
from django.utils import timezone
from PIL import Image as PILImage
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import (
    Image,
    KeepTogether,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from ml.render import mask_overlay, png_bytes
from portal.analyses.composites import CompositeUnavailable, analysis_composite_name
from portal.analyses.models import WITHHELD_MESSAGE, Analysis
from portal.analyses.selectors import study_lesion_malignancies, study_malignancy
from portal.clinical.models import Study
from portal.clinical.services import scan_display_name
from portal.review import selectors
from portal.review.formats import percent_text

logger = logging.getLogger(__name__)

DECISION_SUPPORT = (
    "The model's output is decision support, not a diagnosis. Every result is a "
    "suggestion for a qualified reader to confirm or reject; the radiologist's signed "
    "review is the reading of record. The model is not a medical device and has not been "
    "cleared for clinical use."
)
IMAGE_TITLES = (
    ("original", "Scan"),
    ("overlay", "Lesion outline (model)"),
    ("gradcam", "Grad-CAM"),
    ("seg_gradcam", "Seg-Grad-CAM"),
)
SIGNED_OUTLINE_TITLE = "Lesion outline (signed by the radiologist)"
THUMB_WIDTH = 42 * mm
ROW_WIDTH = 174 * mm  # A4 less the margins
THUMB_PIXELS = 600  # about 360 dpi at THUMB_WIDTH


def _styles() -> dict[str, ParagraphStyle]:
    base = getSampleStyleSheet()
    return {
        "title": base["Title"],
        "h2": base["Heading2"],
        "h3": base["Heading3"],
        "body": base["BodyText"],
        "small": ParagraphStyle(
            "small", parent=base["BodyText"], fontSize=8, leading=10
        ),
        "warning": ParagraphStyle(
            "warning",
            parent=base["BodyText"],
            textColor=colors.HexColor("#b3261e"),
            backColor=colors.HexColor("#fbe9e7"),
            borderColor=colors.HexColor("#b3261e"),
            borderWidth=1,
            borderPadding=6,
            spaceBefore=4,
            spaceAfter=8,
        ),
        "notice": ParagraphStyle(
            "notice",
            parent=base["BodyText"],
            backColor=colors.HexColor("#fff4d6"),
            borderPadding=6,
            spaceBefore=4,
            spaceAfter=10,
        ),
    }


def _esc(value: Any) -> str:
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _table(rows: list[tuple[str, str]], styles: dict) -> Table:
    table = Table(
        [
            [
                Paragraph(f"<b>{_esc(k)}</b>", styles["body"]),
                Paragraph(_esc(v), styles["body"]),
            ]
            for k, v in rows
        ],
        colWidths=(45 * mm, 125 * mm),
    )
    table.setStyle(
        TableStyle(
            [
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LINEBELOW", (0, 0), (-1, -1), 0.25, colors.HexColor("#dfe3ea")),
            ]
        )
    )
    return table


def _image(content: bytes | None, width: float = THUMB_WIDTH) -> Any:
    if not content:
        return Paragraph("(not available)", _styles()["small"])
    # A thumbnail as JPEG keeps a many-image report to a few hundred kilobytes.
    with PILImage.open(io.BytesIO(content)) as source:
        thumbnail = source.convert("RGB")
    thumbnail.thumbnail((THUMB_PIXELS, THUMB_PIXELS))
    buffer = io.BytesIO()
    thumbnail.save(buffer, format="JPEG", quality=90)
    buffer.seek(0)
    picture = Image(buffer)
    ratio = picture.imageHeight / picture.imageWidth if picture.imageWidth else 1
    picture.drawWidth = width
    picture.drawHeight = width * ratio
    return picture


def _stored(name: str) -> bytes | None:
    if not name:
        return None
    try:
        with default_storage.open(name, "rb") as stored:
            return stored.read()
    except (FileNotFoundError, OSError):
        logger.warning("report: stored file %s is missing", name)
        return None


def _picture(analysis: Analysis | None, kind: str) -> bytes | None:
    if analysis is None or analysis.withheld:
        return None
    try:
        return _stored(analysis_composite_name(analysis=analysis, kind=kind))
    except CompositeUnavailable:
        return None
    except Exception:
        logger.warning(
            "report: the %s of analysis %s could not be drawn",
            kind,
            analysis.pk,
            exc_info=True,
        )
        return None


def _signed_outline_picture(display: bytes | None, review: Any) -> bytes | None:
    """The signed reading's outline drawn on the display copy, as the model's is."""
    if display is None or review is None:
        return None
    try:
        mask = selectors.signed_outline_mask(review)
        if mask is None:
            return None
        with PILImage.open(io.BytesIO(display)) as source:
            pixels = np.asarray(source.convert("RGB"))
        if mask.shape != pixels.shape[:2]:  # the display copy may be smaller
            resized = PILImage.fromarray(mask).resize(
                (pixels.shape[1], pixels.shape[0]), PILImage.NEAREST
            )
            mask = np.asarray(resized)
        return png_bytes(mask_overlay(pixels, mask))
    except Exception:
        logger.warning(
            "report: the signed outline of review %s could not be drawn",
            review.pk,
            exc_info=True,
        )
        return None


def _scan_images(scan: Any, analysis: Analysis | None, review: Any = None) -> Table:
    contents: list[bytes | None] = []
    try:
        contents.append(_stored(scan_display_name(scan=scan)))
    except Exception:
        logger.warning("report: scan %s could not be drawn", scan.pk, exc_info=True)
        contents.append(None)
    for kind, _title in IMAGE_TITLES[1:]:
        contents.append(_picture(analysis, kind))
    titles = [title for _kind, title in IMAGE_TITLES]
    signed = _signed_outline_picture(contents[0], review)
    if signed is not None:
        # The reading of record's outline first; the model's stays, as the model's.
        contents.insert(1, signed)
        titles.insert(1, SIGNED_OUTLINE_TITLE)
    styles = _styles()
    width = min(THUMB_WIDTH, ROW_WIDTH / len(contents) - 2 * mm)
    table = Table(
        [
            [_image(content, width) for content in contents],
            [Paragraph(title, styles["small"]) for title in titles],
        ],
        colWidths=[width + 2 * mm] * len(contents),
    )
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP")]))
    return table


def _percent(value: float | None) -> str:
    return "—" if value is None else percent_text(value)


def _model_rows(scan: Any, analysis: Analysis | None) -> list[tuple[str, str]]:
    if analysis is None:
        return [("Model", "not analysed")]
    if analysis.status != Analysis.Status.SUCCEEDED:
        detail = analysis.status + (f": {analysis.error}" if analysis.error else "")
        return [("Model output", detail), ("Model version", analysis.model_version)]
    if analysis.withheld:
        gate = (
            f" (gate score {analysis.gate_score:.2f})"
            if analysis.gate_score is not None
            else ""
        )
        return [
            ("Model output", WITHHELD_MESSAGE + gate),
            ("Model version", analysis.model_version),
        ]
    probabilities = analysis.probabilities or {}
    area = scan.area_mm2(analysis.lesion_area_fraction)
    area_text = _percent(analysis.lesion_area_fraction) + " of the image"
    if area is not None:
        area_text = f"{area:.1f} mm² ({area_text})"
    return [
        (
            "Model label",
            f"{analysis.label} (confidence {_percent(analysis.confidence)})",
        ),
        (
            "Probabilities",
            ", ".join(
                f"{k} {_percent(probabilities.get(k))}" for k in selectors.LABELS
            ),
        ),
        ("Lesion area", area_text),
        ("Operating point", _operating_point(analysis)),
        ("Model version", analysis.model_version),
    ]


def _operating_point(analysis: Analysis) -> str:
    flag = "suspicious" if analysis.suspicious else "not suspicious"
    if analysis.operating_threshold is None:
        return f"{flag} (training sites' operating point: label malignant)"
    return (
        f"{flag} (p(malignant) {_percent(analysis.malignant_probability)} against the "
        f"site's threshold {_percent(analysis.operating_threshold)})"
    )


def _distribution_warning(analysis: Analysis | None, styles: dict) -> list[Any]:
    """The "unusual for this model" caution above an image's results (or, for a
    withheld one, why there are none); nothing when the model found the scan familiar
    or could not tell."""
    if analysis is not None and analysis.withheld:
        return [
            Paragraph(
                "<b>Not analysed: not a breast ultrasound image.</b> No label, "
                "probabilities or outline are given for this image.",
                styles["warning"],
            )
        ]
    if analysis is None or not analysis.outside_training_distribution:
        return []
    figures = ""
    if analysis.ood_score is not None:
        figures = f" Distance score {analysis.ood_score:.2f}"
        if analysis.ood_threshold is not None:
            figures += f", threshold {analysis.ood_threshold:.2f}"
        figures += " (higher is further from the training images)."
    return [
        Paragraph(
            "<b>Unusual for this model.</b> This breast ultrasound is far from the "
            "images the model learned from (perhaps a scanner or preset it has not "
            "seen): a caution, not a verdict." + _esc(figures),
            styles["warning"],
        )
    ]


OUTLINE_WORDS = {
    "corrected": "corrected and signed by the radiologist",
    "no_lesion": "no lesion (signed by the radiologist)",
    "model": "the model's, not corrected",
}


def _review_rows(review: Any) -> list[tuple[str, str]]:
    if review is None:
        return [("Radiologist review", "not yet reviewed and signed")]
    reading = "agrees with the model" if review.agrees_with_model else "corrected label"
    rows = [
        ("Radiologist label", f"{review.label} ({reading})"),
        ("BI-RADS", review.get_birads_display()),
        ("Note", "below" if review.note.strip() else "—"),
        (
            "Signed by",
            (
                f"{review.author.get_full_name() or review.author.get_username()} at "
                f"{timezone.localtime(review.signed_at):%Y-%m-%d %H:%M %Z}"
            ),
        ),
        (
            "Review version",
            str(review.version) + (" (amendment)" if review.amends_id else ""),
        ),
        ("Lesion outline", OUTLINE_WORDS.get(review.outline_state, "—")),
    ]
    return rows


def _study_malignancy_text(study: Study, scans: list[Any]) -> str:
    result = study_malignancy(study=study)
    if result is None:
        return "—"
    number = next(
        (n for n, scan in enumerate(scans, start=1) if scan.pk == result.scan_id), None
    )
    return (
        f"{_percent(result.malignant)} (the most suspicious of {result.images} analysed "
        f"image{'s' if result.images != 1 else ''}: image {number}, "
        f"{result.filename})"
    )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def _lesion_rows(study: Study, scans: list[Any]) -> list[tuple[str, str]]:
    """One row per lesion the reader grouped images into: its most suspicious image's
    result, by the study's rule over the lesion's images alone."""
    numbers = {scan.pk: n for n, scan in enumerate(scans, start=1)}
    rows = []
    for lesion in study_lesion_malignancies(study=study):
        images = ", ".join(str(numbers[pk]) for pk in lesion.scan_ids if pk in numbers)
        members = f"image{'s' if len(lesion.scan_ids) != 1 else ''} {images}"
        result = lesion.result
        if result is None:
            text = f"no analysed image yet ({members})"
        else:
            text = (
                f"{_percent(result.malignant)} (the most suspicious of "
                f"{_plural(result.images, 'analysed image')} of {members}: image "
                f"{numbers.get(result.scan_id)}, {result.filename})"
            )
        if lesion.pathology:
            biopsy = _biopsy_text(lesion.pathology_display, lesion.pathology_date)
            text += f"; biopsy outcome: {biopsy}"
        rows.append((f"Lesion {lesion.label}", text))
    return rows


def _biopsy_text(outcome: str, biopsy_date: datetime.date | None) -> str:
    """An outcome and its biopsy's date where known: "malignant (biopsy), 2026-11-30"."""
    return outcome + (f", {biopsy_date:%Y-%m-%d}" if biopsy_date else "")


def _study_biopsy_rows(study: Study) -> list[tuple[str, str]]:
    """The study's biopsy outcome where one is recorded (lesions carry their own)."""
    if not study.pathology:
        return []
    return [
        (
            "Biopsy outcome",
            _biopsy_text(study.get_pathology_display(), study.pathology_date),
        )
    ]


def _note(review: Any, styles: dict) -> list[Any]:
    """The signed note as paragraphs after the table, one per line of it.

    A table cell cannot split across pages, so a note longer than a page in the table
    raised reportlab's LayoutError (a 500 for everyone until an amendment); paragraphs
    wrap and split wherever the page ends.
    """
    if review is None or not review.note.strip():
        return []
    lines = [line.strip() for line in review.note.splitlines() if line.strip()]
    return [
        Paragraph("<b>Note</b>", styles["body"]),
        *(Paragraph(_esc(line), styles["body"]) for line in lines),
    ]


def study_report_pdf(*, study: Study, generated_by: Any) -> bytes:
    styles = _styles()
    patient = study.patient
    scans = list(
        study.scans.select_related("lesion")
        .prefetch_related("analyses")
        .order_by("uploaded_at", "id")
    )
    reviews = selectors.scan_review_states(study=study)
    story: list[Any] = [
        Paragraph("Breast ultrasound study report", styles["title"]),
        Paragraph(
            f"<b>Decision support.</b> {_esc(DECISION_SUPPORT)}", styles["notice"]
        ),
        Paragraph("Patient", styles["h2"]),
        _table(
            [
                ("Name", patient.name),
                ("Hospital identifier", patient.identifier),
                (
                    "Birth date",
                    f"{patient.birth_date:%Y-%m-%d}" if patient.birth_date else "—",
                ),
            ],
            styles,
        ),
        Paragraph("Study", styles["h2"]),
        _table(
            [
                ("Study", f"{study.pk}"),
                ("Study date", f"{study.study_date:%Y-%m-%d}"),
                ("Accession number", study.accession_number or "—"),
                ("Description", study.description or "—"),
                ("Review status", selectors.study_review_state(study=study)),
                ("Images", str(len(scans))),
                ("Study malignancy", _study_malignancy_text(study, scans)),
                *_study_biopsy_rows(study),
                *_lesion_rows(study, scans),
            ],
            styles,
        ),
    ]
    for number, scan in enumerate(scans, start=1):
        analyses = sorted(
            scan.analyses.all(), key=lambda a: (a.queued_at, a.pk), reverse=True
        )
        review = reviews.get(scan.pk)
        analysis = review.analysis if review else (analyses[0] if analyses else None)
        story.append(
            KeepTogether(
                [
                    Paragraph(
                        f"Image {number}: {_esc(scan.original_filename)}"
                        + (f" (lesion {scan.lesion.label})" if scan.lesion else ""),
                        styles["h3"],
                    ),
                    *_distribution_warning(analysis, styles),
                    _scan_images(scan, analysis, review),
                    Spacer(1, 3 * mm),
                    _table(_model_rows(scan, analysis) + _review_rows(review), styles),
                ]
            )
        )
        story.extend([*_note(review, styles), Spacer(1, 5 * mm)])
    generated = timezone.localtime()
    story.append(
        Paragraph(
            f"Generated {generated:%Y-%m-%d %H:%M %Z} by {_esc(generated_by.get_username())}. "
            f"{_esc(DECISION_SUPPORT)}",
            styles["small"],
        )
    )
    buffer = io.BytesIO()
    document = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        title=f"Study {study.pk} report",
        author="BUS portal",
        leftMargin=18 * mm,
        rightMargin=18 * mm,
        topMargin=16 * mm,
        bottomMargin=16 * mm,
    )
    document.build(story)
    return buffer.getvalue()

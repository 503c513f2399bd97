"""Pictures of a result, drawn on demand from what the worker stored and kept in storage.

A worker stores the model's output only (a 1-bit mask, 8-bit grey heatmaps); pages draw
their overlays in the browser. The PDF report, the API's downloads and the admin want
pictures: the first request draws one with ml.render (numpy and Pillow, never
TensorFlow) on the full-resolution scan, stores it under the analysis's id-derived name,
and later requests stream the stored file. Analyses from before this had their pictures
written by the worker; those are served as they are.
"""

from __future__ import annotations

import logging

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from ml import render
from ml.decode import decode_image
from portal.analyses.models import (
    ARTIFACT_KINDS,
    COMPOSITE_KINDS,
    Analysis,
    artifact_path,
)

logger = logging.getLogger(__name__)

# The stored output each picture is drawn from.
SOURCES = {
    "overlay": "mask",
    "gradcam": "gradcam_map",
    "seg_gradcam": "seg_gradcam_map",
}


class CompositeUnavailable(LookupError):
    """str() says why there is no picture (not finished, or its source file is gone)."""


def _refuse_withheld(analysis: Analysis) -> None:
    if analysis.withheld:
        raise CompositeUnavailable(
            f"analysis {analysis.pk} was not analysed: not a breast ultrasound image"
        )


def analysis_composite_name(*, analysis: Analysis, kind: str) -> str:
    """The storage name of a composite, drawing and storing it first when needed."""
    if kind not in COMPOSITE_KINDS:
        raise ValueError(f"{kind!r} is not a composite; use one of {COMPOSITE_KINDS}")
    _refuse_withheld(analysis)
    cached = getattr(analysis, kind)
    if cached and default_storage.exists(cached.name):
        return cached.name
    source = getattr(analysis, SOURCES[kind])
    if not source:
        raise CompositeUnavailable(
            f"analysis {analysis.pk} has no {kind} image (it is {analysis.status})"
        )
    content = _draw(analysis, kind, source.name)
    name = default_storage.save(
        artifact_path(analysis, f"{kind}.png"), ContentFile(content)
    )
    # Compare-and-set: two requests drawing at once keep one file between them.
    updated = Analysis.objects.filter(pk=analysis.pk, **{kind: cached.name}).update(
        **{kind: name}
    )
    if not updated:
        default_storage.delete(name)
        analysis.refresh_from_db(fields=[kind])
        return getattr(analysis, kind).name
    setattr(analysis, kind, name)
    logger.info("drew the %s picture of analysis %s", kind, analysis.pk)
    return name


def _draw(analysis: Analysis, kind: str, source_name: str) -> bytes:
    try:
        with default_storage.open(source_name, "rb") as stored:
            source = stored.read()
        with default_storage.open(analysis.scan.original.name, "rb") as stored:
            pixels = decode_image(stored).pixels
    except FileNotFoundError:
        logger.warning("analysis %s: a stored file is missing", analysis.pk)
        raise CompositeUnavailable(
            f"a file of analysis {analysis.pk} is missing from storage"
        ) from None
    height, width = pixels.shape[:2]
    if kind == "overlay":
        mask = render.read_mask(source)
        if mask.shape != (height, width):
            raise CompositeUnavailable(
                f"the mask of analysis {analysis.pk} does not match its scan's size"
            )
        return render.png_bytes(render.mask_overlay(pixels, mask))
    heatmap = render.read_heatmap(source, width, height)
    return render.png_bytes(render.heatmap_overlay(pixels, heatmap))


def analysis_artifact_name(*, analysis: Analysis, kind: str) -> str:
    """The storage name of any downloadable artifact: stored output or drawn picture."""
    _refuse_withheld(analysis)
    if kind in COMPOSITE_KINDS:
        return analysis_composite_name(analysis=analysis, kind=kind)
    stored = getattr(analysis, kind)
    if not stored:
        raise CompositeUnavailable(
            f"analysis {analysis.pk} has no {kind} image (it is {analysis.status})"
        )
    return stored.name


def available_kinds(analysis: Analysis) -> list[str]:
    """The artifacts a download of this analysis can give (pictures drawn on demand)."""
    if analysis.withheld:
        return []
    kinds = []
    for kind in ARTIFACT_KINDS:
        if getattr(analysis, kind) or (
            kind in COMPOSITE_KINDS and getattr(analysis, SOURCES[kind])
        ):
            kinds.append(kind)
    return kinds

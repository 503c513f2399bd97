"""Writes to reviews. A signed review is never updated: every write below is an insert
or a save of a row that was locked (select_for_update) and seen unsigned. Writes go
through save(), not update(), so that django-auditlog records each of them; the
counts derived from them (study worklist columns, AgreementCount) are not audited."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.base import ContentFile
from django.db import IntegrityError, connection, transaction
from django.db.models import F, QuerySet
from django.db.models.sql.subqueries import UpdateQuery
from django.utils import timezone

from ml.render import mask_png
from portal.analyses.models import Analysis
from portal.clinical.models import Lesion, Scan, Study, lesion_label
from portal.review.models import AgreementCount, BiRads, OutlineState, Review
from portal.review.selectors import agreement_cells, study_review_columns
from portal.review.signals import reading_signed


class ReviewLocked(ValidationError):
    """The review is signed (or not this user's draft) and cannot be written."""


def _check_analysis(analysis: Analysis) -> None:
    if analysis.status != Analysis.Status.SUCCEEDED:
        raise ValidationError("Only a finished analysis can be reviewed.")


# BI-RADS categories that disagree with a reading's label: signing one is allowed (the
# reader may have a reason, which the note can give) but the page warns first.
_BIRADS_AT_ODDS: dict[str, frozenset[str]] = {
    "normal": frozenset(BiRads.values) - {BiRads.CAT_1},
    "benign": frozenset({BiRads.CAT_4C, BiRads.CAT_5, BiRads.CAT_6}),
    "malignant": frozenset({BiRads.CAT_1, BiRads.CAT_2, BiRads.CAT_3}),
}


def birads_at_odds() -> dict[str, list[str]]:
    """Per label, the BI-RADS categories that disagree with it (for the page's script)."""
    return {label: sorted(cats) for label, cats in _BIRADS_AT_ODDS.items()}


def birads_warning(*, label: str, birads: str) -> str | None:
    """A warning (never a refusal) when the reading's label and category disagree."""
    if birads not in _BIRADS_AT_ODDS.get(label, ()):
        return None
    return (
        f"BI-RADS {birads} is unusual for a reading of {label}: check the category "
        "or say why in the note."
    )


def correction_error(*, model_label: str, label: str) -> str | None:
    """Why a correction is refused: it must name a label other than the model's."""
    if label == model_label:
        return (
            f"A correction must differ from the model's label ({model_label}): "
            "choose another label, or agree with the model."
        )
    return None


def _fields(
    *, analysis: Analysis, agrees_with_model: bool, label: str, birads: str, note: str
) -> dict[str, Any]:
    if agrees_with_model:
        if analysis.withheld:
            raise ValidationError(
                "The model gave no label for this image (not a breast ultrasound): "
                "choose the label yourself."
            )
        label = analysis.label
    if label not in Analysis.Label.values:
        raise ValidationError(f"{label!r} is not a label (normal, benign, malignant).")
    if not agrees_with_model and (
        problem := correction_error(model_label=analysis.label, label=label)
    ):
        raise ValidationError(problem)
    if birads not in BiRads.values:
        raise ValidationError(f"{birads!r} is not a BI-RADS category.")
    return {
        "agrees_with_model": agrees_with_model,
        "label": label,
        "birads": birads,
        "note": note.strip(),
    }


def _outline(
    *,
    analysis: Analysis,
    state: str,
    mask: np.ndarray | None,
    before: Review | None,
) -> tuple[str, str | ContentFile]:
    """The (outline_state, outline) a version gets: the posted edit, or with no state
    posted the outline of the version before it (a file name: files are never
    rewritten), or the model's outline for a first version."""
    if not state:
        if before is None:
            return OutlineState.MODEL, ""
        return before.outline_state, before.outline.name
    if state not in OutlineState.values:
        raise ValidationError(f"{state!r} is not an outline state.")
    if state != OutlineState.CORRECTED:
        return state, ""
    if mask is None:
        raise ValidationError("A corrected outline comes with its mask.")
    scan = analysis.scan
    if mask.shape != (scan.height, scan.width):
        raise ValidationError(
            f"The outline is {mask.shape[1]}x{mask.shape[0]} pixels; the scan is "
            f"{scan.width}x{scan.height}."
        )
    if not mask.any():
        return OutlineState.NO_LESION, ""
    return OutlineState.CORRECTED, ContentFile(mask_png(mask), name="outline.png")


def _set_outline(review: Review, outline: tuple[str, str | ContentFile]) -> None:
    state, content = outline
    review.outline_state = state
    if isinstance(content, ContentFile):
        review.outline.save(content.name, content, save=False)
    else:
        review.outline.name = content


@transaction.atomic
def study_review_refresh(*, study_id: int) -> None:
    """Recompute a study's worklist columns (awaiting_review, max_malignant).

    Called in the transaction that finishes an analysis or signs a review. The study
    row is locked first, so two workers finishing scans of one study at once count
    each other's result: the second waits for the first to commit, then reads it.
    Recomputed from the rows, never incremented, so a value cannot drift.
    """
    studies_review_refresh_locked(study_ids=[study_id])


@transaction.atomic(savepoint=False)
def studies_review_refresh_locked(*, study_ids: Iterable[int]) -> None:
    """`study_review_refresh` for several studies (a worker's batch): locked in id
    order, as every caller locks them, so two batches cannot deadlock; then one UPDATE
    for them all. In the caller's transaction without a savepoint of its own (two round
    trips a batch): no caller goes on after it fails."""
    ids = sorted(set(study_ids))
    if not ids:
        return
    locked = Study.objects.select_for_update().filter(pk__in=ids).order_by("pk")
    list(locked.values_list("pk", flat=True))  # takes the locks
    sql, params = _refresh_statement(ids)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


# The refresh UPDATE of n studies, compiled once per process and n: it differs from one
# batch to the next only by the ids, and Django took ~25 ms of CPU to compile its nested
# subqueries (PostgreSQL runs it in under 1 ms): a worker paid that on every batch.
_refresh_statements: dict[tuple[str, int], tuple[str, tuple[Any, ...]]] = {}


def _refresh_statement(ids: list[int]) -> tuple[str, tuple[Any, ...]]:
    """The SQL and parameters of `studies_review_refresh` for these study ids."""
    key = (connection.vendor, len(ids))
    cached = _refresh_statements.get(key)
    if cached is None:
        query = Study.objects.filter(pk__in=ids).query.chain(UpdateQuery)
        query.add_update_values(study_review_columns())
        sql, params = query.get_compiler(connection=connection).as_sql()
        # The ids are the statement's last parameters (WHERE id IN (...)).
        if tuple(params[-len(ids) :]) != tuple(ids):
            raise RuntimeError("the refresh statement's parameters are not as expected")
        cached = _refresh_statements[key] = (sql, tuple(params[: -len(ids)]))
    sql, fixed = cached
    return sql, (*fixed, *ids)


def studies_review_refresh(*, studies: QuerySet[Study]) -> int:
    """The same for many studies in one UPDATE (seeding, repairs); returns how many."""
    return studies.update(**study_review_columns())


def _agreement_cell(review: Review) -> dict[str, Any] | None:
    """The AgreementCount cell a signed reading counts in (None: it counts nowhere)."""
    analysis = review.analysis
    if review.signed_at is None or analysis.status != Analysis.Status.SUCCEEDED:
        return None
    return {
        "model_version": analysis.model_version,
        "month": timezone.localtime(review.signed_at).date().replace(day=1),
        "model_label": analysis.label,
        "reader_label": review.label,
    }


def _agreement_add(review: Review, readings: int) -> None:
    cell = _agreement_cell(review)
    if cell is None:
        return
    counts = AgreementCount.objects.filter(**cell)
    if counts.update(readings=F("readings") + readings):
        return
    try:
        with transaction.atomic():
            AgreementCount.objects.create(readings=readings, **cell)
    except IntegrityError:  # another signing made the cell meanwhile
        counts.update(readings=F("readings") + readings)


def _reading_signed(review: Review, *, study_id: int) -> None:
    """What follows a signing, in its transaction: the study's worklist columns are
    recomputed, the agreement monitor counts the reading in place of the signed
    reading it amends (which stops being current), and the apps above hear of it (the
    signed reading goes to the PACS as a new, verified SR: portal.dicomnet.receivers)."""
    study_review_refresh(study_id=study_id)
    _agreement_add(review, +1)
    if review.amends is not None:
        _agreement_add(review.amends, -1)
    reading_signed.send(
        sender=Review, analysis_id=review.analysis_id, review_id=review.pk
    )


@transaction.atomic
def agreement_counts_rebuild() -> int:
    """Recompute every AgreementCount from the reviews (seeding, repairs after rows
    were written around these services); returns the number of cells. Readings
    signed while it runs may be counted twice or not at all: run it when no one signs.
    """
    AgreementCount.objects.all().delete()
    made = AgreementCount.objects.bulk_create(
        AgreementCount(**cell) for cell in agreement_cells()
    )
    return len(made)


@transaction.atomic
def review_save(
    *,
    analysis: Analysis,
    author: Any,
    agrees_with_model: bool,
    label: str,
    birads: str,
    note: str = "",
    sign: bool = False,
    outline_state: str = "",
    outline_mask: np.ndarray | None = None,
) -> Review:
    """Create or update the author's open draft of a scan, and sign it if asked.

    With no review yet this makes version 1. After a signed review it makes the next
    version, an amendment pointing at the latest signed one. An open draft by someone
    else is not touched. The lesion outline is versioned with the label: outline_state
    "corrected" with outline_mask (bool, the scan's height x width; empty means no
    lesion), "no_lesion", "model", or "" to keep the outline of the version before.
    """
    _check_analysis(analysis)
    values = _fields(
        analysis=analysis,
        agrees_with_model=agrees_with_model,
        label=label,
        birads=birads,
        note=note,
    )
    now = timezone.now()
    latest = (
        Review.objects.select_for_update()
        .filter(scan_id=analysis.scan_id)
        .order_by("-version")
        .first()
    )
    if latest is not None and not latest.is_signed:
        if latest.author_id != author.pk:
            raise ReviewLocked(
                f"{latest.author.get_username()} has an unsigned draft of this scan."
            )
        for name, value in values.items():
            setattr(latest, name, value)
        _set_outline(
            latest,
            _outline(
                analysis=analysis,
                state=outline_state,
                mask=outline_mask,
                before=latest,
            ),
        )
        latest.analysis = analysis
        latest.updated_at = now
        if sign:
            latest.signed_at = now
        latest.save()
        if sign:
            _reading_signed(latest, study_id=analysis.scan.study_id)
        return latest
    outline = _outline(
        analysis=analysis, state=outline_state, mask=outline_mask, before=latest
    )
    review = Review(
        scan_id=analysis.scan_id,
        analysis=analysis,
        version=(latest.version + 1) if latest else 1,
        amends=latest,
        author=author,
        created_at=now,
        updated_at=now,
        signed_at=now if sign else None,
        **values,
    )
    _set_outline(review, outline)
    try:
        with transaction.atomic():
            review.save(force_insert=True)
    except IntegrityError:
        raise ReviewLocked(
            "Someone else saved a review of this scan at the same moment; reload."
        ) from None
    if sign:
        _reading_signed(review, study_id=analysis.scan.study_id)
    return review


@transaction.atomic
def review_sign(*, review: Review, user: Any) -> Review:
    """Sign an open draft. Only its author signs; a signed review stays as it is."""
    review = Review.objects.select_for_update().get(pk=review.pk)
    if review.is_signed:
        raise ReviewLocked("This review is already signed.")
    if review.author_id != user.pk:
        raise PermissionDenied("Only the author of a draft can sign it.")
    review.signed_at = review.updated_at = timezone.now()
    review.save()
    _reading_signed(review, study_id=review.scan.study_id)
    return review


# --- lesions: which images of a study show the same lesion ------------------------------

# Who may group a study's images into lesions: a reader whose readings count, the same
# permission as signing one (a lesion's result is shown and reported like a reading).
GROUP_LESIONS = "review.sign_review"


def _check_may_group(user: Any) -> None:
    if not user.has_perm(GROUP_LESIONS):
        raise PermissionDenied(
            "Only a reader who may sign readings groups images into lesions."
        )


LESION_OF_SIGNED_READING = (
    "Its reading is signed, and a signed reading never changes: amend the reading "
    "(save a new version of it) to change its lesion."
)


def lesion_locked(*, latest: Review | None) -> bool:
    """Whether a scan whose newest review is `latest` keeps its lesion as it is."""
    return latest is not None and latest.is_signed


def _check_reading_open(scan: Scan) -> None:
    """A scan's lesion is part of its reading (its result is reported with the lesion's
    label): once the newest review is signed it stays, until an amendment reopens the
    reading, as review_save does for the label. The newest review is locked, as
    review_save locks it, so a signing and a regrouping of one scan go one after the
    other."""
    latest = (
        Review.objects.select_for_update()
        .filter(scan_id=scan.pk)
        .order_by("-version")
        .first()
    )
    if lesion_locked(latest=latest):
        raise ReviewLocked(LESION_OF_SIGNED_READING)


@transaction.atomic
def lesion_create(*, study: Study, created_by: Any) -> Lesion:
    """A new lesion of the study, labelled with the first letter not yet used (A, B,
    ...). The study row is locked first, so two readers adding a lesion at once get B
    and C, not B twice (the unique constraint would refuse the second)."""
    _check_may_group(created_by)
    list(Study.objects.select_for_update().filter(pk=study.pk).values_list("pk"))
    taken = set(
        Lesion.objects.filter(study_id=study.pk).values_list("label", flat=True)
    )
    index = 0
    while lesion_label(index) in taken:
        index += 1
    lesion = Lesion(study_id=study.pk, label=lesion_label(index), created_by=created_by)
    lesion.save()
    return lesion


@transaction.atomic
def scan_lesion_set(*, scan: Scan, lesion: Lesion | None, user: Any) -> Scan:
    """Say which lesion of its study the scan shows, or (None) that it is in none.

    Refused for a lesion of another study: a lesion's result must come from its own
    study's images; and once the scan's reading is signed, until an amendment reopens
    it (_check_reading_open). Saved through save(), so django-auditlog keeps each
    grouping the scan ever had and who made it; an unchanged grouping writes nothing.
    """
    _check_may_group(user)
    scan = Scan.objects.select_for_update().get(pk=scan.pk)
    if lesion is not None and lesion.study_id != scan.study_id:
        raise ValidationError("An image joins only a lesion of its own study.")
    if scan.lesion_id != (lesion.pk if lesion else None):
        _check_reading_open(scan)
        scan.lesion = lesion
        scan.save(update_fields=["lesion"])
    return scan


@transaction.atomic
def scan_lesion_new(*, scan: Scan, user: Any) -> Lesion:
    """A new lesion of the scan's study, holding this scan."""
    lesion = lesion_create(study=scan.study, created_by=user)
    scan_lesion_set(scan=scan, lesion=lesion, user=user)
    return lesion

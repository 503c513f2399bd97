"""Review versioning: drafts change, signed reviews never do, amendments chain."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from portal.review.models import Review
from portal.review.services import ReviewLocked, review_save, review_sign


def _save(analysis, author, **overrides):
    values = {
        "agrees_with_model": True,
        "label": "",
        "birads": "4A",
        "note": "irregular margin",
    }
    values.update(overrides)
    return review_save(analysis=analysis, author=author, **values)


def test_agreeing_takes_the_models_label(analysis, radiologist):
    review = _save(analysis, radiologist, sign=True)
    assert review.label == analysis.label == "malignant"
    assert review.agrees_with_model
    assert review.version == 1 and review.amends is None
    assert review.is_signed


def test_a_corrected_label_is_kept(analysis, radiologist):
    review = _save(analysis, radiologist, agrees_with_model=False, label="benign")
    assert (review.label, review.agrees_with_model) == ("benign", False)


def test_a_draft_is_updated_in_place_until_signed(analysis, radiologist):
    draft = _save(analysis, radiologist)
    again = _save(analysis, radiologist, birads="3", note="changed my mind")
    assert again.pk == draft.pk and again.version == 1
    assert not again.is_signed
    signed = review_sign(review=again, user=radiologist)
    assert signed.is_signed and signed.birads == "3"


def test_saving_after_sign_off_creates_an_amendment_linked_to_the_old_version(
    analysis, radiologist
):
    first = _save(analysis, radiologist, sign=True)
    amendment = _save(
        analysis, radiologist, agrees_with_model=False, label="benign", sign=True
    )
    first.refresh_from_db()
    assert amendment.pk != first.pk
    assert amendment.version == 2
    assert amendment.amends == first
    assert first.amended_by == amendment
    # The signed original is unchanged.
    assert (first.label, first.birads, first.note) == (
        "malignant",
        "4A",
        "irregular margin",
    )
    assert first.status == "superseded" and amendment.status == "signed"


def test_a_signed_review_cannot_be_signed_or_edited_again(analysis, radiologist):
    review = _save(analysis, radiologist, sign=True)
    with pytest.raises(ReviewLocked):
        review_sign(review=review, user=radiologist)
    assert Review.objects.count() == 1


def test_only_the_author_signs_a_draft(analysis, radiologist, make_user):
    other = make_user("radiologist", "dr-other")
    draft = _save(analysis, radiologist)
    with pytest.raises(PermissionDenied):
        review_sign(review=draft, user=other)
    with pytest.raises(ReviewLocked):
        _save(analysis, other)


def test_an_unfinished_analysis_cannot_be_reviewed(analysis, radiologist):
    analysis.status = "running"
    analysis.save()
    with pytest.raises(ValidationError):
        _save(analysis, radiologist)


def test_an_unknown_birads_category_is_refused(analysis, radiologist):
    with pytest.raises(ValidationError):
        _save(analysis, radiologist, birads="7")


def test_a_correction_naming_the_models_own_label_is_refused(analysis, radiologist):
    assert analysis.label == "malignant"
    with pytest.raises(ValidationError, match="must differ from the model's label"):
        _save(analysis, radiologist, agrees_with_model=False, label="malignant")
    assert not Review.objects.exists()


def test_birads_at_odds_with_the_label_is_a_warning():
    from portal.review.services import birads_warning

    assert birads_warning(label="malignant", birads="2")
    assert birads_warning(label="benign", birads="4C")
    assert birads_warning(label="normal", birads="3")
    assert birads_warning(label="normal", birads="1") is None
    assert birads_warning(label="malignant", birads="4") is None
    assert birads_warning(label="benign", birads="3") is None


def test_category_4_without_subdivision_can_be_signed(analysis, radiologist):
    review = _save(analysis, radiologist, birads="4", sign=True)
    assert review.birads == "4" and review.is_signed

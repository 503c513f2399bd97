"""The reader's lesion outline: versioned with the review, amendments keep the old one,
"no lesion" is valid, bad posts are refused with a clear message, and every read of
it leaves an access record."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.urls import reverse
from PIL import Image

from ml.render import read_mask
from portal.audit.models import AccessRecord
from portal.review.models import OutlineState, Review
from portal.review.services import review_save

WIDTH, HEIGHT = 64, 48  # the analysed scan of tests/portal/review/conftest.py


def _mask(rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[rows, cols] = True
    return mask


def _data_url(mask: np.ndarray) -> str:
    """What the editor posts: RGBA, opaque white where the lesion is."""
    pixels = np.zeros((*mask.shape, 4), np.uint8)
    pixels[mask] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _stored(review: Review) -> np.ndarray:
    with default_storage.open(review.outline.name, "rb") as stored:
        return read_mask(stored.read())


def _save(analysis, author, **overrides):
    values = {"agrees_with_model": True, "label": "", "birads": "4A", "note": ""}
    values.update(overrides)
    return review_save(analysis=analysis, author=author, **values)


def test_a_corrected_outline_is_stored_at_the_scans_size(analysis, radiologist):
    edit = _mask(slice(5, 20), slice(8, 30))
    review = _save(
        analysis, radiologist, sign=True, outline_state="corrected", outline_mask=edit
    )
    assert review.outline_state == OutlineState.CORRECTED
    assert np.array_equal(_stored(review), edit)
    # Ids and a random name only: no patient data in the storage name.
    assert review.outline.name.startswith(f"reviews/{analysis.scan_id}/")


def test_without_an_edit_a_first_review_keeps_the_models_outline(analysis, radiologist):
    review = _save(analysis, radiologist, sign=True)
    assert review.outline_state == OutlineState.MODEL and not review.outline


def test_an_amendment_keeps_the_signed_outline_and_can_replace_it(
    analysis, radiologist
):
    first_mask = _mask(slice(5, 20), slice(8, 30))
    first = _save(
        analysis,
        radiologist,
        sign=True,
        outline_state="corrected",
        outline_mask=first_mask,
    )
    # A label-only amendment carries the outline on.
    second = _save(analysis, radiologist, sign=True, birads="3")
    assert second.outline_state == OutlineState.CORRECTED
    assert np.array_equal(_stored(second), first_mask)
    # A new outline makes a new file; the signed ones are untouched.
    third = _save(
        analysis,
        radiologist,
        sign=True,
        outline_state="corrected",
        outline_mask=_mask(slice(0, 10), slice(0, 10)),
    )
    first.refresh_from_db()
    assert third.outline.name != first.outline.name
    assert np.array_equal(_stored(first), first_mask)
    assert [r.version for r in Review.objects.filter(scan=analysis.scan)] == [3, 2, 1]


@pytest.mark.parametrize("posted", ["no_lesion", "corrected"])
def test_no_lesion_is_a_valid_correction(analysis, radiologist, posted):
    # An emptied mask says the same as the "No lesion" button.
    review = _save(
        analysis,
        radiologist,
        sign=True,
        outline_state=posted,
        outline_mask=np.zeros((HEIGHT, WIDTH), bool),
    )
    assert review.outline_state == OutlineState.NO_LESION and not review.outline


def test_a_mask_of_another_size_is_refused(analysis, radiologist):
    with pytest.raises(ValidationError, match="64x48"):
        _save(
            analysis,
            radiologist,
            outline_state="corrected",
            outline_mask=np.ones((10, 10), bool),
        )
    assert not Review.objects.exists()


def _post(client, scan, **data):
    payload = {
        "analysis": scan.analyses.get().pk,
        "agrees_with_model": "yes",
        "birads": "4A",
        "action": "sign",
    }
    payload.update(data)
    return client.post(reverse("review:scan_review", args=[scan.pk]), payload)


def test_the_review_form_posts_the_outline(client, radiologist, scan):
    client.force_login(radiologist)
    page = client.get(reverse("review:scan_review", args=[scan.pk])).content.decode()
    assert 'id="outline-editor"' in page and 'name="outline_state"' in page
    edit = _mask(slice(3, 40), slice(10, 50))
    response = _post(
        client, scan, outline_state="corrected", outline_mask=_data_url(edit)
    )
    assert response.status_code == 302
    review = Review.objects.get()
    assert review.is_signed and np.array_equal(_stored(review), edit)

    # The editor loads it back from the review's outline URL, which is recorded.
    url = reverse("review:review_outline", args=[review.pk])
    assert (
        f'data-review-url="{url}"'
        in client.get(reverse("review:scan_review", args=[scan.pk])).content.decode()
    )
    served = client.get(url)
    assert served.status_code == 200
    assert np.array_equal(read_mask(b"".join(served.streaming_content)), edit)
    assert AccessRecord.objects.filter(
        object_id=str(review.pk), detail="corrected outline"
    ).exists()


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        ("", "A corrected outline comes with its mask."),
        ("data:image/gif;base64,R0lGOD", "PNG data URL"),
        ("data:image/png;base64,***", "not valid base64"),
        (
            "data:image/png;base64," + base64.b64encode(b"not a png").decode(),
            "readable PNG",
        ),
    ],
)
def test_a_bad_outline_post_says_what_is_wrong(
    client, radiologist, scan, mask, message
):
    client.force_login(radiologist)
    response = _post(client, scan, outline_state="corrected", outline_mask=mask)
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not Review.objects.exists()


def test_the_outline_needs_the_right_to_see_reviews(
    client, make_user, radiologist, analysis
):
    review = _save(
        analysis,
        radiologist,
        sign=True,
        outline_state="corrected",
        outline_mask=_mask(slice(1, 5), slice(1, 5)),
    )
    client.force_login(make_user(None, "nobody"))
    response = client.get(reverse("review:review_outline", args=[review.pk]))
    assert response.status_code in (302, 403)


def test_the_report_shows_the_signed_outline_beside_the_models(
    client, radiologist, study, user
):
    from tests.portal.review.conftest import analysed_scan
    from tests.portal.review.pdftext import image_draws, pdf_text

    corrected = analysed_scan(study, user, filename="left.png")
    plain = analysed_scan(study, user, filename="right.png")
    _save(
        corrected.analyses.get(),
        radiologist,
        sign=True,
        outline_state="corrected",
        outline_mask=_mask(slice(2, 12), slice(2, 12)),
    )
    _save(plain.analyses.get(), radiologist, sign=True)
    client.force_login(radiologist)
    content = client.get(reverse("review:study_report", args=[study.pk])).content
    text = pdf_text(content)
    assert "Lesion outline (signed by the radiologist)" in text
    assert "Lesion outline (model)" in text
    assert "corrected and signed by the radiologist" in text
    assert "the model's, not corrected" in text
    # Five pictures for the corrected scan, four for the other.
    assert image_draws(content) == 9


def test_an_outline_edit_is_in_the_change_log(analysis, radiologist):
    from auditlog.models import LogEntry

    draft = _save(analysis, radiologist)
    _save(
        analysis,
        radiologist,
        outline_state="corrected",
        outline_mask=_mask(slice(1, 9), slice(1, 9)),
    )
    update = LogEntry.objects.get_for_object(draft).filter(
        action=LogEntry.Action.UPDATE
    )
    changes = update.latest("timestamp").changes_dict
    assert changes["outline_state"] == ["model", "corrected"]
    assert "outline" in changes


def test_the_review_page_offers_the_signed_outline_beside_the_models(
    client, make_user, radiologist, scan
):
    edit = _mask(slice(5, 20), slice(8, 30))
    review = _save(
        scan.analyses.get(),
        radiologist,
        sign=True,
        outline_state="corrected",
        outline_mask=edit,
    )
    reader = make_user("staff", "front-desk")  # sees results, cannot write reviews
    client.force_login(reader)
    page = client.get(reverse("review:scan_review", args=[scan.pk])).content.decode()
    url = reverse("review:review_outline_layer", args=[review.pk])
    assert 'id="toggle-signed_outline"' in page and f'data-url="{url}"' in page
    assert "Radiologist&#x27;s outline (signed, v1)" in page
    assert "Model&#x27;s lesion outline" in page
    layer = client.get(url)
    assert layer.status_code == 200
    with Image.open(io.BytesIO(layer.content)) as image:
        alpha = np.asarray(image.convert("RGBA"))[..., 3] > 0
    assert alpha[5, 8:30].all() and not alpha[12, 15]  # the boundary, not the inside
    assert AccessRecord.objects.filter(
        object_id=str(review.pk), user=reader, detail="corrected outline"
    ).exists()

from __future__ import annotations

import pytest
from django.urls import reverse

from portal.review.models import Review


@pytest.fixture
def spaced_scan(scan):
    """The analysed scan with a known pixel spacing (0.1 mm a row, 0.2 mm a column)."""
    scan.pixel_spacing_row_mm = 0.1
    scan.pixel_spacing_col_mm = 0.2
    scan.save()
    return scan


def _review_page(client, reader, scan) -> str:
    client.force_login(reader)
    return client.get(reverse("review:scan_review", args=[scan.pk])).content.decode()


def _post(client, scan, *, follow=False, **data):
    payload = {
        "analysis": scan.analyses.get().pk,
        "agrees_with_model": "no",
        "label": "benign",
        "birads": "3",
        "note": "probably a fibroadenoma",
        "action": "sign",
    }
    payload.update(data)
    return client.post(
        reverse("review:scan_review", args=[scan.pk]), payload, follow=follow
    )


def test_the_page_shows_layers_probabilities_area_and_version(
    client, radiologist, scan
):
    page = _review_page(client, radiologist, scan)
    analysis = scan.analyses.get()
    for kind in ("outline", "gradcam", "seg_gradcam"):
        assert f'id="toggle-{kind}"' in page
        assert f'id="opacity-{kind}"' in page
    # The heatmaps come as the stored grey maps, coloured by the browser.
    for kind in ("gradcam", "seg_gradcam"):
        url = reverse("analyses:artifact", args=[analysis.pk, f"{kind}_map"])
        assert f'data-layer="{kind}" data-source="heatmap" data-url="{url}"' in page
    outline = reverse("review:analysis_outline", args=[analysis.pk])
    assert f'data-source="picture" data-url="{outline}"' in page
    assert 'id="viewer-canvas"' in page
    assert (
        f'data-display-url="{reverse("review:scan_display", args=[scan.pk])}"' in page
    )
    assert "test-model-1" in page
    assert "pixel spacing unknown" in page
    for label in ("normal", "benign", "malignant"):
        assert f"<th>{label}</th>" in page


def test_lesion_area_is_in_square_millimetres_when_spacing_is_known(
    client, radiologist, spaced_scan
):
    page = _review_page(client, radiologist, spaced_scan)
    # 20 x 20 mask pixels x 0.02 mm² = 8.0 mm²
    assert "8.0 mm²" in page


def test_earlier_analyses_of_the_scan_are_listed(
    client, radiologist, scan, study, user, make_analysed_scan
):
    from portal.analyses.models import Analysis

    old = scan.analyses.get()
    Analysis.objects.create(
        scan=scan,
        model_version="older-model",
        status="succeeded",
        label="benign",
        confidence=0.6,
        probabilities={"normal": 0.1, "benign": 0.6, "malignant": 0.3},
        lesion_area_fraction=0.1,
        queued_at=old.queued_at.replace(year=old.queued_at.year - 1),
    )
    page = _review_page(client, radiologist, scan)
    assert 'id="earlier-analyses"' in page and "older-model" in page


def test_a_radiologist_signs_off_with_a_corrected_label(client, radiologist, scan):
    client.force_login(radiologist)
    response = _post(client, scan)
    assert response.status_code == 302
    review = Review.objects.get()
    assert (review.label, review.birads, review.is_signed) == ("benign", "3", True)
    assert not review.agrees_with_model
    study_page = client.get(reverse("clinical:study_detail", args=[scan.study_id]))
    assert 'id="study-review-state">reviewed<' in study_page.content.decode()


def test_posting_again_after_sign_off_amends(client, radiologist, scan):
    client.force_login(radiologist)
    _post(client, scan)
    _post(client, scan, agrees_with_model="yes", label="", birads="4C")
    first, second = Review.objects.order_by("version")
    assert (first.label, second.label) == ("benign", "malignant")
    assert second.amends == first


def test_staff_cannot_post_a_review(client, user, scan):
    client.force_login(user)
    assert _post(client, scan).status_code == 403
    assert not Review.objects.exists()


def test_a_corrected_label_is_required_when_disagreeing(client, radiologist, scan):
    client.force_login(radiologist)
    response = _post(client, scan, label="")
    assert response.status_code == 200
    assert not Review.objects.exists()


def test_an_analysis_stored_before_heatmap_maps_shows_its_pictures(
    client, radiologist, study, user, make_analysed_scan
):
    scan = make_analysed_scan(study, user, legacy=True)
    analysis = scan.analyses.get()
    page = _review_page(client, radiologist, scan)
    for kind in ("gradcam", "seg_gradcam"):
        url = reverse("analyses:artifact", args=[analysis.pk, kind])
        assert f'data-layer="{kind}" data-source="picture" data-url="{url}"' in page


def test_the_page_reads_no_image_file(client, radiologist, scan, monkeypatch):
    from django.core.files.storage import FileSystemStorage

    opened = []
    real_open = FileSystemStorage.open

    def spy(storage, name, *args, **kwargs):
        opened.append(name)
        return real_open(storage, name, *args, **kwargs)

    monkeypatch.setattr(FileSystemStorage, "open", spy)
    client.force_login(radiologist)
    response = client.get(reverse("review:scan_review", args=[scan.pk]))
    assert response.status_code == 200
    assert opened == []


def test_ruler_spacing_is_given_to_the_viewer_when_known(
    client, radiologist, spaced_scan
):
    page = _review_page(client, radiologist, spaced_scan)
    assert 'data-spacing-row="0.1" data-spacing-col="0.2"' in page
    assert "the ruler measures in mm" in page


def test_correcting_to_the_models_own_label_is_refused_on_the_form(
    client, radiologist, scan
):
    client.force_login(radiologist)
    response = _post(client, scan, label="malignant")
    assert response.status_code == 200
    assert "must differ from the model" in response.content.decode()
    assert not Review.objects.exists()


def test_signing_birads_at_odds_with_the_label_warns_but_signs(
    client, radiologist, scan
):
    client.force_login(radiologist)
    response = _post(
        client, scan, agrees_with_model="yes", label="", birads="2", follow=True
    )
    review = Review.objects.get()
    assert review.is_signed and (review.label, review.birads) == ("malignant", "2")
    assert (
        "BI-RADS 2 is unusual for a reading of malignant" in response.content.decode()
    )


def test_probabilities_are_percent_in_one_class_order(
    client, radiologist, study, user, make_analysed_scan
):
    scan = make_analysed_scan(
        study,
        user,
        probabilities={"benign": 0.1994, "normal": 0.0011, "malignant": 0.7995},
    )
    page = _review_page(client, radiologist, scan)
    table = page[page.index('class="probabilities"') :]
    order = ("normal", "benign", "malignant")
    positions = [table.index(f"<th>{label}</th>") for label in order]
    assert positions == sorted(positions)
    for shown in ("0.1%", "19.9%", "80.0%"):
        assert shown in table
    assert "0.799" not in table


def test_the_study_pages_live_status_carries_its_review_state(
    client, radiologist, scan
):
    client.force_login(radiologist)
    status_url = reverse("clinical:study_status", args=[scan.study_id])
    assert client.get(status_url).json()["review_state"] == "unreviewed"
    _post(client, scan)
    assert client.get(status_url).json()["review_state"] == "reviewed"

"""The out-of-distribution flag wherever a result is shown: review page, study page's
status feed, PDF report, dashboard (with its filter); and which class Grad-CAM explains."""

from __future__ import annotations

import re

from django.urls import reverse

from tests.portal.review.conftest import FLAGGED

from .pdftext import pdf_text

WARNING = "Outside what the model was trained on"


def _review_page(client, scan) -> str:
    return client.get(reverse("review:scan_review", args=[scan.pk])).content.decode()


def test_the_review_page_warns_prominently_with_score_and_threshold(
    client, radiologist, study, user, make_analysed_scan
):
    scan = make_analysed_scan(study, user, **FLAGGED)
    client.force_login(radiologist)
    page = _review_page(client, scan)
    assert 'class="ood-warning" role="alert"' in page
    assert f"{WARNING} — result not reliable." in page
    assert '<span class="ood-score">97.25</span>' in page
    assert '<span class="ood-threshold">41.50</span>' in page
    # Before the viewer and the model's output, not buried under them.
    assert page.index("ood-warning") < page.index('id="viewer"')


def test_the_review_page_says_nothing_when_in_distribution_or_unchecked(
    client, radiologist, study, user, make_analysed_scan
):
    familiar = make_analysed_scan(
        study, user, in_distribution=True, ood_score=3.0, filename="a.png"
    )
    unchecked = make_analysed_scan(study, user, filename="b.png")
    client.force_login(radiologist)
    for scan in (familiar, unchecked):
        page = _review_page(client, scan)
        assert "ood-warning" not in page and WARNING not in page


def test_the_review_page_states_which_class_grad_cam_explains(
    client, radiologist, study, user, make_analysed_scan
):
    shown = make_analysed_scan(study, user, explained_class="malignant")
    other = make_analysed_scan(
        study, user, explained_class="benign", filename="other.png"
    )
    unrecorded = make_analysed_scan(study, user, filename="old.png")
    client.force_login(radiologist)
    page = _review_page(client, shown)
    assert "Grad-CAM explains the class <strong>malignant</strong>." in page
    page = _review_page(client, other)
    assert (
        "Grad-CAM explains the class <strong>benign</strong> (not the label shown)."
        in page
    )
    page = _review_page(client, unrecorded)
    assert "Grad-CAM explains a class not recorded for this analysis." in page


def test_the_study_page_feed_carries_the_flag_its_script_draws(
    client, user, study, make_analysed_scan
):
    make_analysed_scan(study, user, **FLAGGED)
    client.force_login(user)
    feed = client.get(reverse("clinical:study_status", args=[study.pk])).json()
    analysis = feed["scans"][0]["analysis"]
    assert (analysis["in_distribution"], analysis["ood_score"]) == (False, 97.25)
    assert (analysis["ood_threshold"], analysis["explained_class"]) == (
        41.5,
        "malignant",
    )


def test_the_report_carries_the_warning_only_for_flagged_images(
    client, radiologist, study, user, make_analysed_scan
):
    make_analysed_scan(study, user, filename="flagged.png", **FLAGGED)
    client.force_login(radiologist)
    text = pdf_text(client.get(reverse("review:study_report", args=[study.pk])).content)
    assert WARNING in text and "result not reliable" in text
    assert "Out-of-distribution score 97.25, threshold 41.50" in text
    assert text.count(WARNING) == 1

    make_analysed_scan(study, user, filename="familiar.png", in_distribution=True)
    make_analysed_scan(study, user, filename="unchecked.png")
    text = pdf_text(client.get(reverse("review:study_report", args=[study.pk])).content)
    assert text.count(WARNING) == 1


def test_the_dashboard_filters_and_marks_results_outside_the_training_distribution(
    client, user, study, make_analysed_scan
):
    make_analysed_scan(study, user, filename="flagged.png", **FLAGGED)
    make_analysed_scan(study, user, filename="familiar.png", in_distribution=True)
    make_analysed_scan(study, user, filename="unchecked.png")
    client.force_login(user)

    def shown(**params: str) -> set[str]:
        page = client.get(reverse("review:dashboard"), params).content.decode()
        # A row's own link (each row's study-malignancy cell also names the study's
        # driving image, with a title between the address and the name).
        return {
            name
            for name in ("flagged.png", "familiar.png", "unchecked.png")
            if re.search(rf'\?analysis=\d+">{re.escape(name)}</a>', page)
        }

    assert shown() == {"flagged.png", "familiar.png", "unchecked.png"}
    assert shown(distribution="outside") == {"flagged.png"}
    assert shown(distribution="inside") == {"familiar.png"}
    page = client.get(reverse("review:dashboard"), {"distribution": "outside"})
    assert "outside the training distribution" in page.content.decode()
    assert page.content.decode().count('class="badge ood"') == 1
    bad = client.get(reverse("review:dashboard"), {"distribution": "far"})
    assert "Some filters were not understood" in bad.content.decode()

from __future__ import annotations

import datetime
import html

from django.urls import reverse
from django.utils import timezone

from portal.review.selectors import agreement
from portal.review.services import review_save


def _read(scan, radiologist, label, *, when=None):
    review = review_save(
        analysis=scan.analyses.get(),
        author=radiologist,
        agrees_with_model=label is None,
        label=label or "",
        birads="3",
        sign=True,
    )
    if when:
        review.signed_at = when
        review.save()
    return review


def test_agreement_per_label_version_month_and_confusion(
    study, user, radiologist, make_analysed_scan
):
    malignant = {"normal": 0.1, "benign": 0.2, "malignant": 0.7}
    benign = {"normal": 0.1, "benign": 0.8, "malignant": 0.1}
    a = make_analysed_scan(study, user, probabilities=malignant)
    b = make_analysed_scan(study, user, probabilities=malignant, model_version="v2")
    c = make_analysed_scan(study, user, probabilities=benign, model_version="v2")
    make_analysed_scan(study, user, probabilities=benign)  # never reviewed
    january = timezone.make_aware(datetime.datetime(2026, 1, 15, 10))
    _read(a, radiologist, None, when=january)  # agrees: malignant
    _read(b, radiologist, "benign")  # model malignant, reader benign
    _read(c, radiologist, None)  # agrees: benign
    # An amendment replaces the first reading: now a disagreement.
    _read(a, radiologist, "normal")

    stats = agreement()
    assert (stats.total, stats.agreed) == (3, 1)
    assert stats.confusion["malignant"]["normal"] == 1
    assert stats.confusion["malignant"]["benign"] == 1
    assert stats.confusion["benign"]["benign"] == 1
    per_version = {
        v["model_version"]: (v["agreed"], v["total"]) for v in stats.per_version
    }
    assert per_version == {"test-model-1": (0, 1), "v2": (1, 2)}
    per_label = {row["label"]: (row["agreed"], row["total"]) for row in stats.per_label}
    assert per_label == {"normal": (0, 1), "benign": (1, 2), "malignant": (0, 0)}
    assert agreement(model_version="v2").total == 2


def test_the_page_draws_a_chart_and_a_confusion_table(
    client, study, user, radiologist, make_analysed_scan
):
    _read(make_analysed_scan(study, user), radiologist, None)
    client.force_login(radiologist)
    page = client.get(reverse("review:agreement")).content.decode()
    assert 'id="agreement-chart"' in page
    assert 'id="confusion"' in page
    assert "100%" in page


def test_staff_do_not_see_the_agreement_monitor(client, user):
    client.force_login(user)
    assert client.get(reverse("review:agreement")).status_code == 403


def test_an_unknown_model_version_is_an_error_not_every_version(
    client, study, user, radiologist, make_analysed_scan
):
    _read(make_analysed_scan(study, user), radiologist, None)
    client.force_login(radiologist)
    response = client.get(reverse("review:agreement"), {"model_version": "nope-9"})
    assert response.status_code == 400
    page = html.unescape(response.content.decode())
    assert 'id="agreement-error"' in page
    assert "There is no model version 'nope-9'" in page
    assert 'id="agreement-rate"' not in page


def test_a_correction_is_counted_by_the_readers_label(
    client, study, user, radiologist, make_analysed_scan
):
    _read(make_analysed_scan(study, user), radiologist, "benign")
    stats = agreement()
    assert (stats.total, stats.agreed) == (1, 0)
    assert stats.confusion["malignant"]["benign"] == 1

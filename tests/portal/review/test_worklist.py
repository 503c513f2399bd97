from __future__ import annotations

import pytest
from django.urls import reverse

from portal.analyses.services import (
    analysis_claim,
    analysis_create,
    analysis_record_success,
)
from portal.clinical.models import Study
from portal.clinical.services import patient_create, study_create
from portal.review.models import Review
from portal.review.selectors import study_review_columns, worklist_count
from portal.review.services import review_save, review_sign, studies_review_refresh
from tests.results import model_result


def _study(user, identifier):
    patient = patient_create(identifier=identifier, name=f"Person {identifier}")
    return study_create(patient=patient, created_by=user)


def test_unreviewed_studies_most_suspicious_first_with_a_count_in_the_nav(
    client, user, radiologist, make_analysed_scan
):
    low = _study(user, "LOW")
    high = _study(user, "HIGH")
    mixed = _study(user, "MIXED")
    done = _study(user, "DONE")
    make_analysed_scan(
        low, user, probabilities={"normal": 0.8, "benign": 0.15, "malignant": 0.05}
    )
    make_analysed_scan(
        high, user, probabilities={"normal": 0.02, "benign": 0.08, "malignant": 0.9}
    )
    make_analysed_scan(
        mixed, user, probabilities={"normal": 0.1, "benign": 0.6, "malignant": 0.3}
    )
    make_analysed_scan(
        mixed, user, probabilities={"normal": 0.1, "benign": 0.4, "malignant": 0.5}
    )
    reviewed = make_analysed_scan(done, user)
    review_save(
        analysis=reviewed.analyses.get(),
        author=radiologist,
        agrees_with_model=True,
        label="malignant",
        birads="5",
        sign=True,
    )
    client.force_login(radiologist)
    response = client.get(reverse("review:worklist"))
    studies = list(response.context["page"].object_list)
    assert [s.patient.identifier for s in studies] == ["HIGH", "MIXED", "LOW"]
    assert studies[1].max_malignant == 0.5
    assert 'Worklist <span class="count">3</span>' in response.content.decode()


def test_a_draft_does_not_take_a_study_off_the_worklist(
    client, user, radiologist, make_analysed_scan, study
):
    scan = make_analysed_scan(study, user)
    Review.objects.create(
        scan=scan,
        analysis=scan.analyses.get(),
        agrees_with_model=True,
        label="malignant",
        birads="5",
        author=radiologist,
    )
    client.force_login(radiologist)
    assert client.get(reverse("review:worklist")).context["page"].count == 1


def _columns(study):
    study.refresh_from_db()
    return study.awaiting_review, study.max_malignant


def _finish(scan, malignant):
    """The worker's path: claim the queued analysis and record its result."""
    analysis = scan.analyses.get()
    assert analysis_claim(analysis_id=analysis.pk, worker="test")
    probabilities = {"normal": 1 - malignant, "benign": 0.0, "malignant": malignant}
    assert analysis_record_success(
        analysis_id=analysis.pk,
        result=model_result(
            label="malignant" if malignant > 0.5 else "normal",
            confidence=max(malignant, 1 - malignant),
            probabilities=probabilities,
        ),
        artifacts={},
    )
    analysis.refresh_from_db()
    return analysis


def _queued_scan(study, user, name):
    from portal.clinical.models import Scan

    scan = Scan.objects.create(
        study=study,
        original=f"scans/{study.pk}/{name}",
        original_filename=name,
        sha256=name.ljust(64, "0"),
        width=64,
        height=48,
        format="PNG",
        uploaded_by=user,
    )
    analysis_create(scan=scan, model_version="m-1")
    return scan


def _sign(analysis, author):
    return review_save(
        analysis=analysis,
        author=author,
        agrees_with_model=True,
        label=analysis.label,
        birads="2",
        sign=True,
    )


def test_a_study_joins_the_worklist_when_a_result_arrives_and_leaves_when_signed(
    user, radiologist, study, enqueued
):
    first = _queued_scan(study, user, "a.png")
    second = _queued_scan(study, user, "b.png")
    assert _columns(study) == (False, None)
    assert worklist_count() == 0

    one = _finish(first, 0.25)
    assert _columns(study) == (True, 0.25)
    two = _finish(second, 0.75)
    assert _columns(study) == (True, 0.75)
    assert worklist_count() == 1

    _sign(one, radiologist)
    assert _columns(study) == (True, 0.75)
    review = _sign(two, radiologist)
    # Nothing left to read: no image drives the order.
    assert _columns(study) == (False, None)
    assert worklist_count() == 0

    # An amendment keeps the scan read; a new scan's result brings the study back.
    review_save(
        analysis=two,
        author=radiologist,
        agrees_with_model=False,
        label="benign",
        birads="3",
        sign=True,
    )
    assert Review.objects.filter(amends=review).exists()
    assert _columns(study) == (False, None)
    # The new, unsigned image drives the order, not the signed one at 75%.
    _finish(_queued_scan(study, user, "c.png"), 0.5)
    assert _columns(study) == (True, 0.5)


def test_a_draft_signed_later_takes_the_study_off(user, radiologist, study, enqueued):
    analysis = _finish(_queued_scan(study, user, "a.png"), 0.6)
    draft = review_save(
        analysis=analysis,
        author=radiologist,
        agrees_with_model=True,
        label=analysis.label,
        birads="4A",
    )
    assert _columns(study) == (True, 0.6)
    review_sign(review=draft, user=radiologist)
    assert _columns(study) == (False, None)


def test_the_columns_match_the_rule_they_cache(
    user, radiologist, make_analysed_scan, enqueued
):
    studies = [_study(user, f"P{i}") for i in range(4)]
    for index, study in enumerate(studies):
        for n in range(index):
            scan = make_analysed_scan(
                study,
                user,
                filename=f"{n}.png",
                probabilities={"normal": 0.5, "benign": 0.1, "malignant": 0.1 * n},
            )
            if n % 2:
                _sign(scan.analyses.get(), radiologist)
    _queued_scan(studies[3], user, "queued.png")
    cached = {s.pk: _columns(s) for s in studies}
    Study.objects.update(awaiting_review=False, max_malignant=None)
    assert studies_review_refresh(studies=Study.objects.all()) == len(studies)
    recomputed = {s.pk: _columns(s) for s in studies}
    assert recomputed == cached
    expected = dict(
        Study.objects.annotate(
            **{f"rule_{k}": v for k, v in study_review_columns().items()}
        ).values_list("pk", "rule_awaiting_review")
    )
    assert {pk: columns[0] for pk, columns in cached.items()} == expected
    assert [cached[s.pk][0] for s in studies] == [False, True, True, True]


def test_the_most_suspicious_unsigned_image_orders_and_names_the_row(
    client, user, radiologist, make_analysed_scan
):
    # A study at 70% whose only unsigned image is at 11%, and one at 40%.
    read = _study(user, "READ")
    signed = make_analysed_scan(
        read,
        user,
        filename="signed-70.png",
        probabilities={"normal": 0.1, "benign": 0.2, "malignant": 0.7},
    )
    make_analysed_scan(
        read,
        user,
        filename="left-11.png",
        probabilities={"normal": 0.8, "benign": 0.09, "malignant": 0.11},
        in_distribution=False,
    )
    _sign(signed.analyses.get(), radiologist)
    other = _study(user, "OTHER")
    make_analysed_scan(
        other,
        user,
        filename="other-40.png",
        probabilities={"normal": 0.3, "benign": 0.3, "malignant": 0.4},
    )
    client.force_login(radiologist)
    response = client.get(reverse("review:worklist"))
    rows = response.context["studies"]
    assert [s.patient.identifier for s in rows] == ["OTHER", "READ"]
    assert rows[1].max_malignant == pytest.approx(0.11)
    assert (rows[1].next_scan_name, rows[1].unsigned_count, rows[1].scan_count) == (
        "left-11.png",
        1,
        2,
    )
    assert rows[1].unsigned_outside and not rows[0].unsigned_outside
    page = response.content.decode()
    assert "left-11.png" in page and "signed-70.png" not in page
    assert ">1 / 2<" in page
    assert page.count('class="badge ood"') == 1


def test_rows_that_tie_at_one_decimal_show_two_and_the_exact_value_on_hover(
    client, user, radiologist, make_analysed_scan
):
    for name, malignant in (("A", 0.6512), ("B", 0.6508), ("C", 0.2)):
        make_analysed_scan(
            _study(user, name),
            user,
            probabilities={
                "normal": 1 - malignant,
                "benign": 0.0,
                "malignant": malignant,
            },
        )
    client.force_login(radiologist)
    page = client.get(reverse("review:worklist")).content.decode()
    assert ">65.12%<" in page and ">65.08%<" in page and ">20.0%<" in page
    assert 'title="malignant p 65.12%"' in page


def test_a_batch_of_studies_is_recounted_by_one_statement_kept_for_its_size(
    user, radiologist, make_analysed_scan, enqueued
):
    from portal.review.services import studies_review_refresh_locked

    studies = [_study(user, f"B{i}") for i in range(4)]
    for index, study in enumerate(studies):
        make_analysed_scan(
            study,
            user,
            probabilities={"normal": 0.5, "benign": 0.1, "malignant": 0.1 * index},
        )
    _sign(studies[1].scans.get().analyses.get(), radiologist)
    cached = {s.pk: _columns(s) for s in studies}
    Study.objects.update(awaiting_review=False, max_malignant=None)
    # Two pairs of studies through the same statement (the second reuses the first's
    # compiled SQL with other ids), in any order.
    studies_review_refresh_locked(study_ids=[studies[3].pk, studies[0].pk])
    studies_review_refresh_locked(study_ids=[studies[2].pk, studies[1].pk])
    assert {s.pk: _columns(s) for s in studies} == cached
    assert [cached[s.pk][0] for s in studies] == [True, False, True, True]

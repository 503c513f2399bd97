"""Reading through the unsigned scans: "Sign and next" and the previous / next links,
in the worklist's order or a study's."""

from __future__ import annotations

from django.urls import reverse

from portal.clinical.services import patient_create, study_create
from portal.review.models import Review
from portal.review.selectors import reading_place


def _study(user, identifier):
    patient = patient_create(identifier=identifier, name=f"Person {identifier}")
    return study_create(patient=patient, created_by=user)


def _scan(make_analysed_scan, study, user, name, malignant):
    return make_analysed_scan(
        study,
        user,
        filename=name,
        probabilities={"normal": 1 - malignant, "benign": 0.0, "malignant": malignant},
    )


def _high_and_low(user, make_analysed_scan, *, l1_malignant=0.3):
    """Two studies: HIGH with h1 (60%) and h2 (90%), LOW with l1."""
    high, low = _study(user, "HIGH"), _study(user, "LOW")
    h1 = _scan(make_analysed_scan, high, user, "h1.png", 0.6)
    h2 = _scan(make_analysed_scan, high, user, "h2.png", 0.9)
    l1 = _scan(make_analysed_scan, low, user, "l1.png", l1_malignant)
    return high, low, h1, h2, l1


def _sign_next(client, scan, flow):
    return client.post(
        reverse("review:scan_review", args=[scan.pk]),
        {
            "analysis": scan.analyses.get().pk,
            "agrees_with_model": "yes",
            "birads": "4",
            "flow": flow,
            "action": "sign_next",
        },
    )


def _review_url(scan, flow):
    return f"{reverse('review:scan_review', args=[scan.pk])}?flow={flow}"


def test_the_queue_follows_the_worklist_then_the_most_suspicious_image(
    user, make_analysed_scan
):
    high, low, h1, h2, l1 = _high_and_low(user, make_analysed_scan)
    place = reading_place(scan_id=h1.pk, study_id=high.pk)
    assert (place.study_position, place.studies) == (1, 2)
    assert (place.image_position, place.images) == (2, 2)
    assert (place.previous, place.next) == (h2.pk, l1.pk)
    low_place = reading_place(scan_id=l1.pk, study_id=low.pk)
    assert low_place.previous == h1.pk  # the last of the study before
    # From the last, the first still waiting (a skipped scan comes round again).
    assert low_place.next == h2.pk
    in_study = reading_place(scan_id=h1.pk, study_id=high.pk, only_study=True)
    assert (in_study.previous, in_study.next) == (h2.pk, h2.pk)
    # Signing h2 goes on in its study, before the next study.
    assert reading_place(scan_id=h2.pk, study_id=high.pk).after_signing == h1.pk


def test_sign_and_next_finishes_a_study_whose_order_drops_as_it_is_read(
    client, user, radiologist, make_analysed_scan
):
    first, second = _study(user, "FIRST"), _study(user, "SECOND")
    a1 = _scan(make_analysed_scan, first, user, "a1.png", 0.9)
    a2 = _scan(make_analysed_scan, first, user, "a2.png", 0.6)
    b1 = _scan(make_analysed_scan, second, user, "b1.png", 0.8)
    client.force_login(radiologist)
    # Once a1 is signed, FIRST ranks below SECOND (60% < 80%): its a2 still comes next.
    assert _sign_next(client, a1, "worklist").url == _review_url(a2, "worklist")
    assert _sign_next(client, a2, "worklist").url == _review_url(b1, "worklist")


def test_sign_and_next_walks_the_worklist_and_ends_on_it(
    client, user, radiologist, make_analysed_scan
):
    _, _, h1, h2, l1 = _high_and_low(user, make_analysed_scan)
    client.force_login(radiologist)
    assert _sign_next(client, h2, "worklist").url == _review_url(h1, "worklist")
    assert _sign_next(client, h1, "worklist").url == _review_url(l1, "worklist")
    assert _sign_next(client, l1, "worklist").url == reverse("review:worklist")
    assert Review.objects.filter(signed_at__isnull=False, birads="4").count() == 3


def test_sign_and_next_in_a_study_stays_in_it_and_ends_on_its_page(
    client, user, radiologist, make_analysed_scan
):
    high, _, h1, h2, _ = _high_and_low(user, make_analysed_scan, l1_malignant=0.95)
    client.force_login(radiologist)
    # Another study's scan is more suspicious, but the study's own comes next.
    assert _sign_next(client, h1, "study").url == _review_url(h2, "study")
    assert _sign_next(client, h2, "study").url == reverse(
        "clinical:study_detail", args=[high.pk]
    )


def test_the_page_links_the_previous_and_next_scan_and_lists_its_keys(
    client, user, radiologist, make_analysed_scan
):
    study = _study(user, "S")
    a = _scan(make_analysed_scan, study, user, "a.png", 0.9)
    b = _scan(make_analysed_scan, study, user, "b.png", 0.5)
    c = _scan(make_analysed_scan, study, user, "c.png", 0.1)
    client.force_login(radiologist)
    page = client.get(_review_url(b, "worklist")).content.decode()
    assert f'href="{_review_url(a, "worklist")}" id="previous-scan"' in page
    assert f'href="{_review_url(c, "worklist")}" id="next-scan"' in page
    assert "Study 1 of 1 in the worklist · image 2 of 3 unsigned in this study" in page
    assert 'id="shortcuts"' in page and 'id="sign-next"' in page
    assert 'value="4"' in page  # BI-RADS 4, not subdivided


def test_the_worklist_starts_reading_at_the_first_unsigned_scan(
    client, user, radiologist, make_analysed_scan
):
    study = _study(user, "S")
    _scan(make_analysed_scan, study, user, "a.png", 0.2)
    top = _scan(make_analysed_scan, study, user, "b.png", 0.7)
    client.force_login(radiologist)
    page = client.get(reverse("review:worklist")).content.decode()
    assert f'id="start-reading" href="{_review_url(top, "worklist")}"' in page


def test_an_image_ranks_by_its_latest_result_not_a_superseded_one(
    user, make_analysed_scan
):
    import datetime

    from portal.analyses.models import Analysis
    from portal.review.selectors import worklist_top

    study = _study(user, "S")
    rerun = _scan(make_analysed_scan, study, user, "rerun.png", 0.9)
    steady = _scan(make_analysed_scan, study, user, "steady.png", 0.5)
    superseded = rerun.analyses.get()
    # Analysed again by another model: 10% now, its 90% superseded (the worklist
    # column's and the study result's rule).
    Analysis.objects.create(
        scan=rerun,
        model_version="m-next",
        status=Analysis.Status.SUCCEEDED,
        label="normal",
        confidence=0.9,
        probabilities={"normal": 0.9, "benign": 0.0, "malignant": 0.1},
        queued_at=superseded.queued_at + datetime.timedelta(minutes=1),
    )
    place = reading_place(scan_id=steady.pk, study_id=study.pk)
    assert (place.image_position, place.next) == (1, rerun.pk)
    assert worklist_top().next_scan_id == steady.pk

"""Lesions (issue 20, item 5): a reader groups the images of a study that show the same
lesion on the review page, and each lesion gets its most suspicious image's result on the
study page, in the PDF report and in the API."""

from __future__ import annotations

import json
from typing import Any

import pytest
from auditlog.models import LogEntry
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from portal.analyses.selectors import (
    lesion_malignancies,
    study_lesion_malignancies,
    study_malignancy,
)
from portal.clinical.models import Lesion, Scan, lesion_label
from portal.clinical.services import (
    lesion_record_pathology,
    patient_create,
    study_create,
)
from portal.review.services import (
    ReviewLocked,
    lesion_create,
    review_save,
    scan_lesion_new,
    scan_lesion_set,
)

from .conftest import analysed_scan, withheld_scan
from .pdftext import pdf_text

pytestmark = pytest.mark.django_db


def _p(malignant: float) -> dict[str, float]:
    rest = 1.0 - malignant
    return {"normal": rest / 2, "benign": rest / 2, "malignant": malignant}


@pytest.fixture
def scans(study: Any, user: Any) -> list[Any]:
    """Four analysed images: two views of one lesion, one of another, one ungrouped."""
    return [
        analysed_scan(study, user, filename=name, probabilities=_p(malignant))
        for name, malignant in (
            ("left-1.png", 0.30),
            ("left-2.png", 0.55),
            ("right-1.png", 0.20),
            ("axilla.png", 0.90),
        )
    ]


@pytest.fixture
def other_study(user: Any) -> Any:
    return study_create(
        patient=patient_create(identifier="H-0042", name="Other Person"),
        created_by=user,
    )


def _group(scans: list[Any], reader: Any) -> tuple[Lesion, Lesion]:
    """left-1 and left-2 in lesion A, right-1 in lesion B; axilla.png in none."""
    first = scan_lesion_new(scan=scans[0], user=reader)
    scan_lesion_set(scan=scans[1], lesion=first, user=reader)
    second = scan_lesion_new(scan=scans[2], user=reader)
    return first, second


# --- services ------------------------------------------------------------------------


def test_lesion_labels_run_a_to_z_then_aa() -> None:
    assert [lesion_label(i) for i in (0, 1, 25, 26, 27, 51, 52)] == [
        "A",
        "B",
        "Z",
        "AA",
        "AB",
        "AZ",
        "BA",
    ]


def test_a_reader_groups_and_ungroups_images_and_each_change_is_audited(
    radiologist: Any, scans: list[Any]
) -> None:
    first, second = _group(scans, radiologist)
    assert (first.label, second.label) == ("A", "B")
    assert [Scan.objects.get(pk=s.pk).lesion_id for s in scans] == [
        first.pk,
        first.pk,
        second.pk,
        None,
    ]
    created = LogEntry.objects.get_for_object(first).get()
    assert created.action == LogEntry.Action.CREATE
    scan_lesion_set(scan=scans[1], lesion=None, user=radiologist)
    assert Scan.objects.get(pk=scans[1].pk).lesion_id is None
    changes = [
        entry.changes_dict["lesion"]
        for entry in LogEntry.objects.get_for_object(scans[1])
        .filter(action=LogEntry.Action.UPDATE)
        .order_by("timestamp", "pk")
    ]
    assert changes == [["None", str(first.pk)], [str(first.pk), "None"]]
    # The same grouping again writes nothing.
    scan_lesion_set(scan=scans[1], lesion=None, user=radiologist)
    assert LogEntry.objects.get_for_object(scans[1]).count() == 3  # create + 2


def test_a_reader_who_may_not_sign_cannot_group(
    user: Any, administrator: Any, scans: list[Any], study: Any
) -> None:
    for outsider in (user, administrator):  # staff and administrators read, never sign
        with pytest.raises(PermissionDenied):
            lesion_create(study=study, created_by=outsider)
        with pytest.raises(PermissionDenied):
            scan_lesion_new(scan=scans[0], user=outsider)
    assert not Lesion.objects.exists()


def test_an_image_never_joins_a_lesion_of_another_study(
    radiologist: Any, scans: list[Any], other_study: Any, user: Any
) -> None:
    foreign = lesion_create(study=other_study, created_by=radiologist)
    with pytest.raises(ValidationError):
        scan_lesion_set(scan=scans[0], lesion=foreign, user=radiologist)
    assert Scan.objects.get(pk=scans[0].pk).lesion_id is None
    # Each study labels its own lesions from A.
    assert lesion_create(study=scans[0].study, created_by=radiologist).label == "A"


def _read(scan: Any, reader: Any, *, sign: bool) -> Any:
    return review_save(
        analysis=scan.analyses.get(),
        author=reader,
        agrees_with_model=True,
        label="malignant",
        birads="4B",
        sign=sign,
    )


def test_a_signed_reading_keeps_its_lesion_until_an_amendment_reopens_it(
    radiologist: Any, scans: list[Any]
) -> None:
    first, second = _group(scans, radiologist)
    _read(scans[0], radiologist, sign=False)
    scan_lesion_set(scan=scans[0], lesion=second, user=radiologist)  # a draft: open
    scan_lesion_set(scan=scans[0], lesion=first, user=radiologist)
    _read(scans[0], radiologist, sign=True)
    audited = LogEntry.objects.get_for_object(scans[0]).count()
    for change in (
        lambda: scan_lesion_set(scan=scans[0], lesion=second, user=radiologist),
        lambda: scan_lesion_set(scan=scans[0], lesion=None, user=radiologist),
        lambda: scan_lesion_new(scan=scans[0], user=radiologist),
    ):
        with pytest.raises(ReviewLocked, match="signed reading never changes"):
            change()
    assert Scan.objects.get(pk=scans[0].pk).lesion_id == first.pk
    assert LogEntry.objects.get_for_object(scans[0]).count() == audited
    assert Lesion.objects.filter(study=scans[0].study).count() == 2  # none made
    # Setting the lesion it already has changes nothing, so it is no refusal.
    scan_lesion_set(scan=scans[0], lesion=first, user=radiologist)
    # Other images of the study are not locked by this one's reading.
    scan_lesion_set(scan=scans[1], lesion=second, user=radiologist)
    # The amendment (a new version, a draft until signed) reopens the reading.
    amendment = _read(scans[0], radiologist, sign=False)
    assert amendment.amends is not None
    scan_lesion_set(scan=scans[0], lesion=second, user=radiologist)
    assert Scan.objects.get(pk=scans[0].pk).lesion_id == second.pk
    assert LogEntry.objects.get_for_object(scans[0]).count() == audited + 1
    _read(scans[0], radiologist, sign=True)
    with pytest.raises(ReviewLocked):
        scan_lesion_set(scan=scans[0], lesion=first, user=radiologist)


def test_the_review_page_and_its_script_say_why_a_signed_readings_lesion_stays(
    client: Any, radiologist: Any, scans: list[Any]
) -> None:
    first, second = _group(scans, radiologist)
    _read(scans[0], radiologist, sign=True)
    client.force_login(radiologist)
    html = client.get(
        reverse("review:scan_review", args=[scans[0].pk])
    ).content.decode()
    assert 'id="lesion-form"' not in html
    assert '<strong id="lesion-label">A</strong>' in html
    assert 'id="lesion-locked"' in html and "amend it to change its lesion" in html
    url = reverse("review:scan_lesion", args=[scans[0].pk])
    refused = client.post(url, {"lesion": second.pk}, HTTP_ACCEPT="application/json")
    assert refused.status_code == 400
    answer = json.loads(refused.content)
    assert answer["lesion"] == first.pk
    assert answer["message"].startswith("left-1.png: the lesion was not changed.")
    assert "a signed reading never changes" in answer["message"]
    posted = client.post(url, {"lesion": "new"}, follow=True)
    assert "the lesion was not changed" in posted.content.decode()
    assert Scan.objects.get(pk=scans[0].pk).lesion_id == first.pk
    # An image of the same study whose reading is open keeps its form.
    html = client.get(
        reverse("review:scan_review", args=[scans[1].pk])
    ).content.decode()
    assert 'id="lesion-form"' in html and 'id="lesion-locked"' not in html


# --- the per-lesion result -------------------------------------------------------------


def test_each_lesion_gets_its_most_suspicious_image_and_the_study_keeps_every_image(
    radiologist: Any, scans: list[Any], study: Any
) -> None:
    _group(scans, radiologist)
    lesion_a, lesion_b = study_lesion_malignancies(study=study)
    assert (lesion_a.label, lesion_a.scan_ids) == ("A", (scans[0].pk, scans[1].pk))
    assert lesion_a.result.malignant == pytest.approx(0.55)
    assert lesion_a.result.scan_id == scans[1].pk
    assert lesion_a.result.filename == "left-2.png" and lesion_a.result.images == 2
    assert lesion_b.result.malignant == pytest.approx(0.20)
    assert lesion_b.result.scan_id == scans[2].pk and lesion_b.result.images == 1
    # The ungrouped image still drives the study.
    assert study_malignancy(study=study).scan_id == scans[3].pk


def test_a_withheld_image_counts_for_nothing_in_its_lesion(
    client: Any, radiologist: Any, scans: list[Any], study: Any, user: Any
) -> None:
    first, _ = _group(scans, radiologist)
    photo = withheld_scan(study, user)  # its verdict says 87.65% malignant
    scan_lesion_set(scan=photo, lesion=first, user=radiologist)
    lesion_a = study_lesion_malignancies(study=study)[0]
    assert lesion_a.scan_ids == (scans[0].pk, scans[1].pk, photo.pk)
    assert lesion_a.result.malignant == pytest.approx(0.55)
    assert lesion_a.result.images == 2
    client.force_login(radiologist)
    html = client.get(
        reverse("clinical:study_detail", args=[study.pk])
    ).content.decode()
    assert "its 2 analysed images, 3 in the lesion: <a" in html
    assert "87.6" not in html
    # A lesion of withheld images alone has no result.
    scan_lesion_new(scan=photo, user=radiologist)
    lesion_c = study_lesion_malignancies(study=study)[2]
    assert lesion_c.label == "C" and lesion_c.result is None


def test_lesion_results_take_two_queries_for_any_number_of_studies(
    radiologist: Any, scans: list[Any], study: Any, other_study: Any, user: Any
) -> None:
    _group(scans, radiologist)
    elsewhere = analysed_scan(other_study, user, probabilities=_p(0.4))
    scan_lesion_new(scan=elsewhere, user=radiologist)
    with CaptureQueriesContext(connection) as captured:
        results = lesion_malignancies(study_ids=[study.pk, other_study.pk])
    assert len(captured.captured_queries) == 2
    assert [lesion.label for lesion in results[study.pk]] == ["A", "B"]
    assert [lesion.label for lesion in results[other_study.pk]] == ["A"]
    # An empty lesion (its images moved out) says nothing.
    scan_lesion_set(scan=elsewhere, lesion=None, user=radiologist)
    assert other_study.pk not in lesion_malignancies(study_ids=[other_study.pk])


# --- pages, PDF, API ----------------------------------------------------------------


def test_the_study_page_shows_a_line_per_lesion_under_the_study_result(
    client: Any, radiologist: Any, scans: list[Any], study: Any
) -> None:
    _group(scans, radiologist)
    client.force_login(radiologist)
    html = client.get(
        reverse("clinical:study_detail", args=[study.pk])
    ).content.decode()
    assert html.index('id="study-malignancy"') < html.index('id="lesion-malignancies"')
    driver = scans[1]
    link = (
        f"{reverse('review:scan_review', args=[driver.pk])}"
        f"?analysis={driver.analyses.get().pk}"
    )
    assert 'data-lesion="A">Lesion A: <strong class="lesion-malignant">55.0%' in html
    assert "the most suspicious of its 2 analysed images: <a" in html and link in html
    assert 'data-lesion="B">Lesion B: <strong class="lesion-malignant">20.0%' in html
    assert html.count("lesion-badge") == 3  # the grouped images' cards


def test_the_pdf_reports_each_lesion(
    client: Any, radiologist: Any, scans: list[Any], study: Any
) -> None:
    _group(scans, radiologist)
    client.force_login(radiologist)
    response = client.get(reverse("review:study_report", args=[study.pk]))
    text = " ".join(pdf_text(response.content).split())
    assert (
        "Lesion A 55.0% (the most suspicious of 2 analysed images of images 1, 2: "
        "image 2, left-2.png)"
    ) in text
    assert "Lesion B 20.0%" in text and "image 3, right-1.png" in text
    assert "Image 1: left-1.png (lesion A)" in text
    assert "Image 4: axilla.png (lesion" not in text


def test_the_api_lists_the_lesions_of_a_study(
    make_user: Any, radiologist: Any, scans: list[Any], study: Any
) -> None:
    from knox.models import AuthToken
    from rest_framework.test import APIClient

    _group(scans, radiologist)
    _, key = AuthToken.objects.create(make_user("staff", "api-staff"))
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    detail = api.get(f"/api/v1/studies/{study.pk}/")
    assert detail.status_code == 200, detail.content
    assert detail.json()["lesions"] == [
        {
            "label": "A",
            "scans": [scans[0].pk, scans[1].pk],
            "malignancy": {
                "malignant": pytest.approx(0.55),
                "scan": scans[1].pk,
                "analysis": scans[1].analyses.get().pk,
                "filename": "left-2.png",
                "images": 2,
                "rule": "max",
            },
            "biopsy": None,
        },
        {
            "label": "B",
            "scans": [scans[2].pk],
            "malignancy": {
                "malignant": pytest.approx(0.20),
                "scan": scans[2].pk,
                "analysis": scans[2].analyses.get().pk,
                "filename": "right-1.png",
                "images": 1,
                "rule": "max",
            },
            "biopsy": None,
        },
    ]
    assert detail.json()["study_malignancy"]["scan"] == scans[3].pk


def _grouped_beside_a_plain_study(scans: list[Any], radiologist: Any, user: Any) -> Any:
    """The study's scans grouped into lesions A and B, and another study without any."""
    _group(scans, radiologist)
    plain = study_create(
        patient=patient_create(identifier="H-0100", name="No Lesion"), created_by=user
    )
    analysed_scan(plain, user, probabilities=_p(0.5))
    return plain


def test_the_api_study_list_gives_each_study_its_lesions_in_queries_that_do_not_grow(
    make_user: Any, radiologist: Any, scans: list[Any], study: Any, user: Any
) -> None:
    from knox.models import AuthToken
    from rest_framework.test import APIClient

    plain = _grouped_beside_a_plain_study(scans, radiologist, user)
    _, key = AuthToken.objects.create(make_user("radiologist", "api-reader"))
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    api.get("/api/v1/studies/")  # the process's content-type cache, read once

    def listed() -> tuple[dict[int, Any], int]:
        with CaptureQueriesContext(connection) as captured:
            response = api.get("/api/v1/studies/")
        assert response.status_code == 200, response.content
        return (
            {row["id"]: row for row in response.json()["results"]},
            len(captured.captured_queries),
        )

    rows, few = listed()
    detail = api.get(f"/api/v1/studies/{study.pk}/").json()
    assert rows[study.pk]["lesions"] == detail["lesions"]  # one shape, list and detail
    assert [
        (
            lesion["label"],
            len(lesion["scans"]),
            lesion["malignancy"]["malignant"],
            lesion["malignancy"]["scan"],
        )
        for lesion in rows[study.pk]["lesions"]
    ] == [
        ("A", 2, pytest.approx(0.55), scans[1].pk),
        ("B", 1, pytest.approx(0.20), scans[2].pk),
    ]
    assert rows[plain.pk]["lesions"] == []
    # Five more studies, each with three lesions of analysed images and one of a
    # withheld image (no result).
    for number in range(5):
        more = study_create(
            patient=patient_create(identifier=f"H-02{number}", name=f"More {number}"),
            created_by=user,
        )
        for malignant in (0.1, 0.2, 0.3):
            image = analysed_scan(more, user, probabilities=_p(malignant))
            scan_lesion_new(scan=image, user=radiologist)
        scan_lesion_new(scan=withheld_scan(more, user), user=radiologist)
    rows, many = listed()
    assert len(rows) == 7 and many == few
    assert sum(len(row["lesions"]) for row in rows.values()) == 2 + 5 * 4
    assert {
        lesion["label"]: lesion["malignancy"] and lesion["malignancy"]["malignant"]
        for lesion in rows[more.pk]["lesions"]
    } == {
        "A": pytest.approx(0.1),
        "B": pytest.approx(0.2),
        "C": pytest.approx(0.3),
        "D": None,
    }


def test_the_worklist_row_hints_at_each_lesion_in_queries_that_do_not_grow(
    client: Any, radiologist: Any, scans: list[Any], study: Any, user: Any
) -> None:
    import re

    plain = _grouped_beside_a_plain_study(scans, radiologist, user)
    client.force_login(radiologist)
    url = reverse("review:worklist")
    client.get(url)  # the process's content-type cache, read once for the audit

    def rows() -> tuple[dict[int, str], int]:
        with CaptureQueriesContext(connection) as captured:
            response = client.get(url)
        assert response.status_code == 200
        html = response.content.decode()
        found = re.findall(r'<tr data-study="(\d+)">(.*?)</tr>', html, re.DOTALL)
        return {int(pk): row for pk, row in found}, len(captured.captured_queries)

    shown, few = rows()
    assert "lesions: A 55%, B 20%</span>" in shown[study.pk]
    assert "lesion-hint" not in shown[plain.pk]
    # A lesion's biopsy outcome beside its result, in the same queries.
    lesion_b = Lesion.objects.get(study=study, label="B")
    lesion_record_pathology(
        lesion=lesion_b, outcome="malignant", entered_by=radiologist
    )
    shown, biopsied = rows()
    assert biopsied == few
    assert (
        'lesions: A 55%, B 20% · <span class="lesion-biopsy">malignant (biopsy)</span>'
        "</span>" in shown[study.pk]
    )
    for number in range(5):
        more = study_create(
            patient=patient_create(identifier=f"H-02{number}", name=f"More {number}"),
            created_by=user,
        )
        for malignant in (0.1, 0.2, 0.3):
            image = analysed_scan(more, user, probabilities=_p(malignant))
            scan_lesion_new(scan=image, user=radiologist)
        scan_lesion_new(scan=withheld_scan(more, user), user=radiologist)
    shown, many = rows()
    assert len(shown) == 7 and many == few
    assert "lesions: A 10%, B 20%, C 30%, D —</span>" in shown[more.pk]


def _dashboard_rows(client: Any) -> tuple[dict[str, str], int]:
    """The dashboard's rows by image file name, and the page's queries."""
    import re

    with CaptureQueriesContext(connection) as captured:
        response = client.get(reverse("review:dashboard"))
    assert response.status_code == 200
    rows = re.findall(r"<tr>(.*?)</tr>", response.content.decode(), re.DOTALL)
    named = {
        re.search(r'analysis=\d+">([^<]+)</a>', row).group(1): row
        for row in rows
        if "analysis=" in row
    }
    return named, len(captured.captured_queries)


def test_the_dashboard_row_of_a_grouped_image_names_its_lesion_and_its_result(
    client: Any, radiologist: Any, scans: list[Any], study: Any, user: Any
) -> None:
    client.force_login(radiologist)
    client.get(reverse("review:dashboard"))  # the process's content-type cache
    rows, ungrouped = _dashboard_rows(client)
    assert "lesion-hint" not in "".join(rows.values())
    first, _ = _group(scans, radiologist)
    photo = withheld_scan(study, user)  # in lesion A, counting for nothing in it
    scan_lesion_set(scan=photo, lesion=first, user=radiologist)
    rows, grouped = _dashboard_rows(client)
    hint = (
        '<span class="small muted lesion-hint" data-lesion="A" title="the '
        "lesion's most suspicious image: left-2.png\">lesion A: 55.0%</span>"
    )
    for name in ("left-1.png", "left-2.png", "photo.png"):
        assert hint in rows[name], name
    assert 'data-lesion="B"' in rows["right-1.png"]
    assert "lesion B: 20.0%</span>" in rows["right-1.png"]
    assert "lesion-hint" not in rows["axilla.png"]
    # The page's lesions in two queries (lesion_malignancies), whatever the rows.
    assert grouped == ungrouped + 2
    # A lesion's biopsy outcome beside its result, in those same queries.
    lesion_record_pathology(lesion=first, outcome="benign", entered_by=radiologist)
    rows, biopsied = _dashboard_rows(client)
    assert biopsied == grouped
    for name in ("left-1.png", "left-2.png", "photo.png"):
        assert (
            'lesion A: 55.0% · <span class="lesion-biopsy">benign (biopsy)</span>'
            in rows[name]
        ), name
    assert "lesion-biopsy" not in rows["right-1.png"]
    for number in range(5):
        more = study_create(
            patient=patient_create(identifier=f"H-03{number}", name=f"More {number}"),
            created_by=user,
        )
        for malignant in (0.1, 0.2, 0.3):
            image = analysed_scan(
                more,
                user,
                filename=f"m{number}-{malignant}.png",
                probabilities=_p(malignant),
            )
            scan_lesion_new(scan=image, user=radiologist)
        scan_lesion_new(
            scan=withheld_scan(more, user, filename=f"m{number}.png"), user=radiologist
        )
    rows, many = _dashboard_rows(client)
    assert len(rows) == 5 + 5 * 4 and many == grouped
    assert "lesion C: 30.0%</span>" in rows["m4-0.3.png"]
    assert "no image of the lesion is analysed yet" in rows["m4.png"]
    assert "lesion D: —</span>" in rows["m4.png"]


def _queries(client: Any, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200
    return len(captured.captured_queries)


def test_the_pages_and_api_read_lesions_in_queries_that_do_not_grow(
    client: Any, make_user: Any, radiologist: Any, study: Any, user: Any
) -> None:
    from knox.models import AuthToken
    from rest_framework.test import APIClient

    images = [
        analysed_scan(study, user, filename=f"v{i}.png", probabilities=_p(0.1 * i))
        for i in range(1, 7)
    ]
    scan_lesion_new(scan=images[0], user=radiologist)
    _, key = AuthToken.objects.create(make_user("staff", "api-staff"))
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    client.force_login(radiologist)
    urls = (
        reverse("clinical:study_detail", args=[study.pk]),
        reverse("review:scan_review", args=[images[0].pk]),
    )
    few = [_queries(client, url) for url in urls] + [
        _queries(api, f"/api/v1/studies/{study.pk}/")
    ]
    # Every image in a lesion, five lesions.
    for image in images[1:]:
        scan_lesion_new(scan=image, user=radiologist)
    assert Lesion.objects.filter(study=study).count() == 6
    many = [_queries(client, url) for url in urls] + [
        _queries(api, f"/api/v1/studies/{study.pk}/")
    ]
    assert many == few


# --- the review page's control -------------------------------------------------------


def test_the_review_page_offers_the_studys_lesions_to_a_reader_only(
    client: Any, radiologist: Any, user: Any, scans: list[Any]
) -> None:
    first, _ = _group(scans, radiologist)
    client.force_login(radiologist)
    html = client.get(
        reverse("review:scan_review", args=[scans[1].pk])
    ).content.decode()
    assert 'id="lesion-form"' in html
    assert f'<option value="{first.pk}" selected>A (2 images)</option>' in html
    assert '<option value="new">new lesion</option>' in html
    client.force_login(user)  # staff: sees the grouping, cannot change it
    html = client.get(
        reverse("review:scan_review", args=[scans[1].pk])
    ).content.decode()
    assert 'id="lesion-form"' not in html
    assert '<strong id="lesion-label">A</strong>' in html


def test_the_review_page_posts_a_lesion_with_its_csrf_token(
    radiologist: Any, scans: list[Any]
) -> None:
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(radiologist)
    review_url = reverse("review:scan_review", args=[scans[0].pk])
    lesion_url = reverse("review:scan_lesion", args=[scans[0].pk])
    assert browser.post(lesion_url, {"lesion": "new"}).status_code == 403
    page = browser.get(f"{review_url}?flow=worklist")
    token = page.context["csrf_token"]
    analysis = scans[0].analyses.get().pk
    response = browser.post(
        lesion_url,
        {
            "csrfmiddlewaretoken": str(token),
            "lesion": "new",
            "flow": "worklist",
            "analysis": analysis,
        },
    )
    assert response.status_code == 302
    assert response["Location"] == f"{review_url}?flow=worklist&analysis={analysis}"
    lesion = Lesion.objects.get()
    assert Scan.objects.get(pk=scans[0].pk).lesion_id == lesion.pk
    page = browser.get(response["Location"])
    assert "left-1.png: lesion A." in page.content.decode()


def test_the_pages_script_gets_the_lesions_back_as_json(
    client: Any, radiologist: Any, scans: list[Any], other_study: Any
) -> None:
    first, second = _group(scans, radiologist)
    client.force_login(radiologist)
    url = reverse("review:scan_lesion", args=[scans[3].pk])
    answer = client.post(url, {"lesion": first.pk}, HTTP_ACCEPT="application/json")
    assert answer.status_code == 200
    assert json.loads(answer.content) == {
        "message": "axilla.png: lesion A.",
        "lesion": first.pk,
        "lesions": [
            {"id": first.pk, "label": "A", "images": 3},
            {"id": second.pk, "label": "B", "images": 1},
        ],
    }
    foreign = lesion_create(study=other_study, created_by=radiologist)
    refused = client.post(url, {"lesion": foreign.pk}, HTTP_ACCEPT="application/json")
    assert refused.status_code == 400
    assert "own study" in json.loads(refused.content)["message"]
    assert json.loads(refused.content)["lesion"] == first.pk  # unchanged
    unknown = client.post(url, {"lesion": "x"}, HTTP_ACCEPT="application/json")
    assert unknown.status_code == 400
    none = client.post(url, {"lesion": ""}, HTTP_ACCEPT="application/json")
    assert json.loads(none.content)["lesion"] is None


def test_a_user_who_may_not_sign_is_refused_the_post(
    client: Any, user: Any, scans: list[Any]
) -> None:
    client.force_login(user)
    response = client.post(
        reverse("review:scan_lesion", args=[scans[0].pk]), {"lesion": "new"}
    )
    assert response.status_code == 403
    assert not Lesion.objects.exists()

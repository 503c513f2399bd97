"""Dashboard: filters, search, counts (bounded), queue state, keyset pagination, and a
query count that does not grow with the number of studies."""

from __future__ import annotations

import datetime
import html
import re
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from portal.analyses.models import Analysis
from portal.audit.models import AccessRecord
from portal.clinical.models import Patient, Scan, Study
from portal.review.models import Review


def bulk_studies(n: int, user: Any, *, start: int = 0) -> None:
    """n patients, each with one study, one scan and one analysis (bulk inserts)."""
    now = timezone.now()
    labels = ("normal", "benign", "malignant")
    statuses = ("succeeded", "succeeded", "succeeded", "queued", "running", "failed")
    patients = Patient.objects.bulk_create(
        Patient(identifier=f"B-{start + i:06d}", name=f"Bulk Person {start + i}")
        for i in range(n)
    )
    studies = Study.objects.bulk_create(
        Study(
            patient=p,
            accession_number=f"ACC{start + i:06d}",
            study_date=datetime.date(2026, 1, 1) + datetime.timedelta(days=i % 300),
            created_by=user,
        )
        for i, p in enumerate(patients)
    )
    scans = Scan.objects.bulk_create(
        Scan(
            study=s,
            original=f"scans/{s.pk}/x.png",
            original_filename=f"img{i}.png",
            sha256="0" * 64,
            width=100,
            height=100,
            format="PNG",
            uploaded_by=user,
            uploaded_at=now - datetime.timedelta(minutes=i),
        )
        for i, s in enumerate(studies)
    )
    analyses = []
    for i, scan in enumerate(scans):
        status = statuses[i % len(statuses)]
        label = labels[i % 3] if status == "succeeded" else ""
        p = 0.4 + (i % 60) / 100
        analyses.append(
            Analysis(
                scan=scan,
                model_version="m-1" if i % 2 else "m-2",
                status=status,
                label=label,
                confidence=p if label else None,
                probabilities={
                    "normal": (1 - p) / 2,
                    "benign": (1 - p) / 2,
                    "malignant": p,
                }
                if label
                else None,
                finished_at=now if status in ("succeeded", "failed") else None,
            )
        )
    Analysis.objects.bulk_create(analyses)


@pytest.fixture
def staff_client(client, user):
    client.force_login(user)
    return client


def _page(client, **params):
    response = client.get(reverse("review:dashboard"), params)
    assert response.status_code == 200
    return response


ACCESS_RECORD_INSERT = f'INSERT INTO "{AccessRecord._meta.db_table}"'


def _queries(client, **params) -> tuple[int, int]:
    """(the page's own queries, its access-record inserts): the audit insert is counted
    apart so that it cannot hide a query the page itself grew."""
    with CaptureQueriesContext(connection) as captured:
        _page(client, **params)
    sql = [query["sql"] for query in captured.captured_queries]
    audit = sum(statement.startswith(ACCESS_RECORD_INSERT) for statement in sql)
    return len(sql) - audit, audit


FILTERED = {
    "q": "Bulk",
    "date_from": "2026-01-01",
    "date_to": "2026-12-31",
    "label": "malignant",
    "confidence_min": "10",
    "confidence_max": "100",
    "review": "unreviewed",
    "status": "succeeded",
    # m-2: the even rows, where the succeeded malignant ones are (i % 6 == 2).
    "model_version": "m-2",
}


def test_the_number_of_queries_does_not_grow_with_the_data(staff_client, user):
    bulk_studies(5, user)
    # The process's content-type cache, read once for access records.
    _page(staff_client)
    small = _queries(staff_client)
    small_filtered = _queries(staff_client, **FILTERED)
    bulk_studies(10_000, user, start=5)
    assert Study.objects.count() == 10_005
    large = _queries(staff_client)
    first = _page(staff_client, **FILTERED).context["page"]
    large_filtered = _queries(staff_client, **FILTERED, after=first.next_cursor)
    second = _page(staff_client, **FILTERED, after=first.next_cursor).context["page"]
    third = _page(staff_client, **FILTERED, after=second.next_cursor).context["page"]
    assert third.object_list
    large_back = _queries(staff_client, **FILTERED, before=third.previous_cursor)
    back_to_top = _queries(staff_client, **FILTERED, before=second.previous_cursor)
    assert small == large
    assert small_filtered == large_filtered == large_back == back_to_top
    # A search's reading (how many patients and accession numbers it matches) is read
    # with the model versions, in the same statement (selectors.filter_facts).
    assert large[0] <= 12 and large_filtered[0] <= 12
    assert large[1] == 1 and large_filtered[1] == 1  # one insert for a page of rows


def _rel(response: Any, rel: str) -> str | None:
    """The query string of the page's rel="next" / "prev" / "first" link, as a
    browser would follow it (None when the page has no such link)."""
    found = re.search(rf'<a href="\?([^"]*)" rel="{rel}">', response.content.decode())
    return html.unescape(found.group(1)) if found else None


def _follow(client: Any, query: str) -> Any:
    response = client.get(f"{reverse('review:dashboard')}?{query}")
    assert response.status_code == 200
    return response


def test_rows_are_newest_first_and_paged_by_cursor_both_ways(staff_client, user):
    bulk_studies(120, user)
    response = _page(staff_client)
    first = response.context["page"]
    assert sum(response.context["counts"]["statuses"].values()) == 120
    assert len(first.object_list) == 50 and not first.has_previous()
    uploaded = [row.scan.uploaded_at for row in first.object_list]
    assert uploaded == sorted(uploaded, reverse=True)
    assert _rel(response, "prev") is None
    second = _follow(staff_client, _rel(response, "next"))
    third = _follow(staff_client, _rel(second, "next"))
    assert len(third.context["page"].object_list) == 20
    assert _rel(third, "next") is None and not third.context["page"].has_next()
    shown = [
        row.pk
        for page in (response, second, third)
        for row in page.context["page"].object_list
    ]
    assert shown == _ordered_as_before()
    # Back from the last page: the second page again, then the newest.
    back = _follow(staff_client, _rel(third, "prev"))
    assert [r.pk for r in back.context["page"]] == [
        r.pk for r in second.context["page"]
    ]
    newest = _follow(staff_client, _rel(back, "prev"))
    assert [r.pk for r in newest.context["page"]] == [r.pk for r in first]
    assert not newest.context["page"].has_previous()
    assert _rel(third, "first") == ""


def test_a_cursor_this_list_did_not_make_shows_the_newest_page_and_says_so(
    staff_client, user
):
    bulk_studies(60, user)
    newest = [row.pk for row in _page(staff_client).context["page"]]
    for cursor in ("not-a-cursor", "WzEsMl0", "WyJ5ZXN0ZXJkYXkiLDEsMl0"):
        response = _page(staff_client, after=cursor)
        assert [row.pk for row in response.context["page"]] == newest
        assert "Page position" in response.context["ignored"][-1]
        assert 'id="filters-ignored"' in response.content.decode()


def test_each_page_records_the_rows_it_shows(staff_client, user):
    bulk_studies(60, user)
    older_link = _rel(_page(staff_client), "next")
    AccessRecord.objects.all().delete()
    older = _follow(staff_client, older_link)
    shown = {str(row.pk) for row in older.context["page"]}
    assert len(shown) == 10
    recorded = AccessRecord.objects.filter(detail="dashboard", user=user)
    assert set(recorded.values_list("object_id", flat=True)) == shown


def test_a_user_without_the_reading_permissions_gets_no_page_at_any_cursor(
    client, user, make_user
):
    bulk_studies(60, user)
    client.force_login(user)
    cursor = _page(client).context["page"].next_cursor
    client.force_login(make_user(None, "no-role"))
    for params in ({}, {"after": cursor}, {"before": cursor}):
        response = client.get(reverse("review:dashboard"), params)
        assert response.status_code == 403
    assert not AccessRecord.objects.filter(username="no-role").exists()


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"label": "benign"}, lambda a: a.label == "benign"),
        ({"status": "failed"}, lambda a: a.status == "failed"),
        ({"model_version": "m-2"}, lambda a: a.model_version == "m-2"),
        (
            {"confidence_min": "70", "confidence_max": "90"},
            lambda a: a.confidence is not None and 0.7 <= a.confidence <= 0.9,
        ),
        (
            {"date_from": "2026-01-10", "date_to": "2026-01-20"},
            lambda a: (
                datetime.date(2026, 1, 10)
                <= a.scan.study.study_date
                <= datetime.date(2026, 1, 20)
            ),
        ),
        (
            {"patient": "b-000007"},
            lambda a: a.scan.study.patient.identifier == "B-000007",
        ),
        ({"q": "ACC000042"}, lambda a: a.scan.study.accession_number == "ACC000042"),
        ({"q": "Person 13"}, lambda a: "Person 13" in a.scan.study.patient.name),
        (
            {"q": "B-00003"},
            lambda a: a.scan.study.patient.identifier.startswith("B-00003"),
        ),
    ],
)
def test_each_filter_keeps_exactly_the_matching_rows(
    staff_client, user, params, expected
):
    bulk_studies(60, user)
    page = _page(staff_client, **params).context["page"]
    shown = {row.pk for row in page.object_list}
    wanted = {
        a.pk
        for a in Analysis.objects.select_related("scan__study__patient")
        if expected(a)
    }
    assert wanted, "the filter should match something"
    assert shown == wanted


def test_review_status_filter(staff_client, user, make_user):
    bulk_studies(6, user)
    reviewed = Analysis.objects.filter(status="succeeded").first()
    Review.objects.create(
        scan=reviewed.scan,
        analysis=reviewed,
        agrees_with_model=True,
        label=reviewed.label,
        birads="2",
        author=make_user("radiologist", "dr"),
        signed_at=timezone.now(),
    )
    shown = {r.pk for r in _page(staff_client, review="reviewed").context["page"]}
    assert shown == {reviewed.pk}
    unreviewed = {
        r.pk for r in _page(staff_client, review="unreviewed").context["page"]
    }
    assert reviewed.pk not in unreviewed and len(unreviewed) == 5


def test_counts_per_label_and_status_and_queue_state(staff_client, user):
    bulk_studies(12, user)
    Analysis.objects.filter(status="failed").update(
        finished_at=timezone.now() - datetime.timedelta(days=3)
    )
    context = _page(staff_client).context
    counts = context["counts"]
    assert counts["statuses"] == {
        "queued": 2,
        "running": 2,
        "succeeded": 6,
        "failed": 2,
    }
    assert sum(counts["labels"].values()) == 6
    assert context["queue"] == {"queued": 2, "running": 2, "failed_last_day": 0}
    filtered = _page(staff_client, status="succeeded").context["counts"]
    assert filtered["statuses"]["queued"] == 0


def test_bad_filter_values_are_ignored_not_fatal(staff_client, user):
    bulk_studies(3, user)
    page = _page(staff_client, date_from="yesterday", confidence_min="lots")
    assert len(page.context["page"].object_list) == 3


def _ordered_as_before(**filters: Any) -> list[int]:
    """The rows the dashboard shows, as one plain query orders them."""
    rows = Analysis.objects.filter(**filters).order_by(
        "-scan__uploaded_at", "-scan_id", "-id"
    )
    return list(rows.values_list("pk", flat=True))


# A cap above the rows: the few are sorted; below them: the upload order is walked.
@pytest.mark.parametrize("cap", [10_000, 5], ids=["sorted", "walked"])
def test_pages_keep_the_order_through_equal_upload_times_and_filters(
    staff_client, user, monkeypatch, cap
):
    from portal.review import selectors

    monkeypatch.setattr(selectors, "COUNT_CAP", cap)
    bulk_studies(70, user)
    # Scans uploaded at the same instant, each with two model versions' results: a
    # page boundary falls inside both ties (same time, then same scan).
    same = timezone.now() - datetime.timedelta(days=1)
    Scan.objects.filter(pk__in=Scan.objects.order_by("pk")[10:40]).update(
        uploaded_at=same
    )
    Analysis.objects.bulk_create(
        Analysis(scan=analysis.scan, model_version="m-9", status="succeeded")
        for analysis in Analysis.objects.all()[:40]
    )
    for params, filters in (
        ({}, {}),
        ({"status": "succeeded"}, {"status": "succeeded"}),
        ({"model_version": "m-9"}, {"model_version": "m-9"}),
    ):
        pages = [_page(staff_client, **params)]
        while (older := _rel(pages[-1], "next")) is not None:
            # The filters travel in the link with the cursor.
            for name, value in params.items():
                assert f"{name}={value}" in older
            pages.append(_follow(staff_client, older))
        shown = [row.pk for page in pages for row in page.context["page"]]
        assert shown == _ordered_as_before(**filters)
        assert len(shown) == len(set(shown))
        # Walked back from the oldest page, each page is the one it was.
        walked_back = [pages[-1]]
        while (newer := _rel(walked_back[-1], "prev")) is not None:
            walked_back.append(_follow(staff_client, newer))
        assert [[r.pk for r in p.context["page"]] for p in walked_back] == [
            [r.pk for r in p.context["page"]] for p in reversed(pages)
        ]


# A bound above the matches: their studies are read first; below: each row checked.
@pytest.mark.parametrize("few", [2_000, 3], ids=["studies first", "walked"])
@pytest.mark.parametrize(
    ("term", "expected"),
    [
        ("Person 1", lambda a: "Person 1" in a.scan.study.patient.name),
        ("b-00002", lambda a: a.scan.study.patient.identifier.startswith("B-00002")),
        ("acc00003", lambda a: a.scan.study.accession_number.startswith("ACC00003")),
        ("nobody", lambda a: False),
    ],
)
def test_a_search_shows_every_match_in_order_however_many_match(
    staff_client, user, monkeypatch, few, term, expected
):
    from portal.review import selectors

    monkeypatch.setattr(selectors, "SEARCH_FEW", few)
    bulk_studies(130, user)
    wanted = [
        pk
        for pk in _ordered_as_before()
        if expected(Analysis.objects.select_related("scan__study__patient").get(pk=pk))
    ]
    pages = [_page(staff_client, q=term)]
    while (older := _rel(pages[-1], "next")) is not None:
        pages.append(_follow(staff_client, older))
    shown = [row.pk for page in pages for row in page.context["page"]]
    assert shown == wanted
    counts = pages[0].context["counts"]
    assert sum(counts["statuses"].values()) == len(wanted)


def _newest_study_first(**filters: Any) -> list[int]:
    rows = Analysis.objects.filter(**filters).order_by(
        "-scan__study__study_date",
        "-scan__study_id",
        "-scan__uploaded_at",
        "-scan_id",
        "-id",
    )
    return list(rows.values_list("pk", flat=True))


@pytest.mark.parametrize("cap", [10_000, 5], ids=["sorted", "walked"])
def test_with_a_study_date_range_rows_are_newest_study_first_then_newest_upload(
    staff_client, user, monkeypatch, cap
):
    from portal.review import selectors

    monkeypatch.setattr(selectors, "COUNT_CAP", cap)
    # Study dates rise with i while uploads go back in time: the two orders differ.
    bulk_studies(90, user)
    studies = list(Study.objects.order_by("pk"))
    # Two studies on one date (the study id decides), and studies with a second
    # scan uploaded after the first and one at the same instant (the scan decides).
    Study.objects.filter(pk=studies[20].pk).update(study_date=studies[21].study_date)
    first_scans = {scan.study_id: scan for scan in Scan.objects.all()}
    for n, study in enumerate(studies[10:40]):
        scan = first_scans[study.pk]
        later = scan.uploaded_at + datetime.timedelta(minutes=n % 3)
        extra = Scan.objects.create(
            study=study,
            original=f"scans/{study.pk}/y.png",
            original_filename="second.png",
            sha256="1" * 64,
            width=100,
            height=100,
            format="PNG",
            uploaded_by=user,
            uploaded_at=later,
        )
        Analysis.objects.create(scan=extra, model_version="m-1", status="succeeded")
    params = {"date_from": "2026-01-05", "date_to": "2026-03-15"}
    wanted = _newest_study_first(
        scan__study__study_date__range=(
            datetime.date(2026, 1, 5),
            datetime.date(2026, 3, 15),
        )
    )
    assert wanted != [pk for pk in _ordered_as_before() if pk in set(wanted)], (
        "the upload order would pass this test"
    )
    pages = [_page(staff_client, **params)]
    while (older := _rel(pages[-1], "next")) is not None:
        assert "date_from=2026-01-05" in older and "date_to=2026-03-15" in older
        pages.append(_follow(staff_client, older))
    shown = [row.pk for page in pages for row in page.context["page"]]
    assert len(pages) == 2 and shown == wanted
    # The page says its order, above the rows and beside the page links.
    assert "Newest study first" in pages[0].content.decode()
    assert 'id="dashboard-order"' in pages[0].content.decode()
    assert "newest study first" in pages[-1].content.decode()
    back = _follow(staff_client, _rel(pages[-1], "prev"))
    assert [r.pk for r in back.context["page"]] == [
        r.pk for r in pages[0].context["page"]
    ]
    # A cursor of the upload order is not this list's: the first page, and it says so.
    upload_cursor = _page(staff_client).context["page"].next_cursor
    response = _page(staff_client, **params, after=upload_cursor)
    assert [r.pk for r in response.context["page"]] == wanted[:50]
    assert "Page position" in response.context["ignored"][-1]


def test_counts_are_exact_up_to_the_cap_and_say_more_beyond_it(
    staff_client, user, monkeypatch
):
    from portal.review import selectors

    bulk_studies(30, user)
    monkeypatch.setattr(selectors, "COUNT_CAP", 15)
    # 15 succeeded, 5 of each label: at the cap, exact.
    exact = _page(staff_client, status="succeeded")
    assert not exact.context["counts"]["over_cap"]
    assert exact.context["counts"]["labels"] == {
        "normal": 5,
        "benign": 5,
        "malignant": 5,
    }
    assert '<span class="n">15</span> succeeded' in exact.content.decode()
    # 30 match: beyond the cap, the page says so and shows no partial numbers.
    beyond = _page(staff_client)
    assert beyond.context["counts"]["over_cap"]
    page = beyond.content.decode()
    assert 'id="over-cap"' in page and "15+" in page
    assert "succeeded</div>" not in page
    # The rows are all there, whatever the counts say.
    shown = [row.pk for row in beyond.context["page"]]
    assert shown == _ordered_as_before()


def _plan(query: Any) -> str:
    sql, params = query.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
        return "\n".join(str(row[-1]) for row in cursor.fetchall())


@pytest.mark.skipif(
    connection.vendor != "sqlite", reason="SQLite's planner, which has no statistics"
)
def test_on_sqlite_a_page_walks_the_upload_index_and_counts_read_indexes(user):
    from portal.review.selectors import (
        DashboardFilters,
        dashboard_page,
        dashboard_rows,
    )

    bulk_studies(3, user)
    newest = dashboard_rows(DashboardFilters()).values("pk")[:50]
    plan = _plan(newest)
    # Sorting every analysis to keep 50 took a second at 10,000 studies.
    assert "scan_uploaded" in plan and "TEMP B-TREE" not in plan
    unreviewed_malignant = dashboard_rows(
        DashboardFilters(label="malignant", review="unreviewed")
    )
    counted = unreviewed_malignant.order_by().values("status", "label")
    plan = _plan(counted)
    assert "COVERING INDEX analysis_label_status_scan" in plan
    assert "review_signed_scan" in plan
    # The page's ids picked from indexes; only those rows read whole.
    page = dashboard_page(unreviewed_malignant, size=50)
    assert [row.pk for row in page] == list(
        unreviewed_malignant.values_list("pk", flat=True)[:50]
    )


def test_one_invalid_filter_is_dropped_alone_and_named(staff_client, user):
    bulk_studies(12, user)
    malignant = set(
        Analysis.objects.filter(label="malignant").values_list("pk", flat=True)
    )
    response = _page(staff_client, label="malignant", confidence_min="150")
    shown = {row.pk for row in response.context["page"].object_list}
    assert shown == malignant and len(malignant) < 12
    page = response.content.decode()
    assert 'id="filters-ignored"' in page
    assert "Confidence from (%) (150)" in page
    assert "Predicted label" not in response.context["ignored"][0]


def test_the_dashboard_and_the_api_refuse_the_same_values(staff_client, user):
    from portal.review.filters import InvalidFilters, read_filters

    query = {"label": "malignant", "confidence_min": "150"}
    with pytest.raises(InvalidFilters) as refused:
        read_filters(query)
    assert set(refused.value.errors) == {"confidence_min"}
    ignored = _page(staff_client, **query).context["ignored"]
    assert len(ignored) == 1 and refused.value.errors["confidence_min"][0] in ignored[0]


def test_a_confidence_filter_compares_the_percent_the_page_shows(staff_client, user):
    bulk_studies(1, user)
    shown_as_80 = Analysis.objects.get()
    shown_as_80.confidence = 0.7995
    shown_as_80.save()
    page = _page(staff_client, confidence_min="80")
    assert [row.pk for row in page.context["page"].object_list] == [shown_as_80.pk]
    assert ">80.0%<" in page.content.decode()
    assert not list(_page(staff_client, confidence_max="79.9").context["page"])
    assert list(_page(staff_client, confidence_max="80").context["page"])

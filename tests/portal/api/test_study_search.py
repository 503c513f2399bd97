"""The API's study list searches as the dashboard does (review.selectors._search_matches):
by patient name, hospital id or accession number, read from the indexes when the term
matches few patients and checked row by row on the walk when it matches many, in a
number of queries that does not grow with the data."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from django.db import connection
from django.test.utils import CaptureQueriesContext

from portal.audit.models import AccessRecord
from portal.clinical.models import Study
from portal.review.selectors import DashboardFilters, filter_facts, filtered_studies
from tests.portal.review.test_dashboard import bulk_studies

URL = "/api/v1/studies/"
ACCESS_RECORD_INSERT = f'INSERT INTO "{AccessRecord._meta.db_table}"'

# A patient's name, a hospital id and an accession number, each of one study only;
# "Bulk" is in every patient's name.
BY_NAME = {"q": "Bulk Person 4"}
BY_ID = {"q": "b-000003"}
BY_ACCESSION = {"search": "acc000002"}
EVERY_PATIENT = {"q": "Bulk"}


def _listed(client: Any, params: dict[str, str]) -> tuple[list[int], int, int]:
    """(the studies listed, the request's own queries, its access-record inserts)."""
    with CaptureQueriesContext(connection) as captured:
        response = client.get(URL, params)
    assert response.status_code == 200, response.content
    sql = [query["sql"] for query in captured.captured_queries]
    audit = sum(statement.startswith(ACCESS_RECORD_INSERT) for statement in sql)
    return [s["id"] for s in response.json()["results"]], len(sql) - audit, audit


def _study_of(**conditions: str) -> int:
    return Study.objects.get(**conditions).pk


def test_studies_are_found_by_name_hospital_id_or_accession_in_the_same_queries(
    staff_api, user
):
    bulk_studies(5, user)
    staff_api.get(URL)  # the process's content-type cache, read once for the audit
    small = {
        "name": _listed(staff_api, BY_NAME),
        "id": _listed(staff_api, BY_ID),
        "accession": _listed(staff_api, BY_ACCESSION),
        "every patient": _listed(staff_api, EVERY_PATIENT),
    }
    assert small["name"][0] == [_study_of(patient__name="Bulk Person 4")]
    assert small["id"][0] == [_study_of(patient__identifier="B-000003")]
    assert small["accession"][0] == [_study_of(accession_number="ACC000002")]
    assert len(small["every patient"][0]) == 5
    assert not filter_facts(search="Bulk").search_broad

    bulk_studies(10_000, user, start=5)
    assert filter_facts(search="Bulk").search_broad  # now read row by row
    large = {
        "name": _listed(staff_api, {"q": "Bulk Person 4321"}),
        "id": _listed(staff_api, {"q": "b-004321"}),
        "accession": _listed(staff_api, {"search": "acc004321"}),
        "every patient": _listed(staff_api, EVERY_PATIENT),
    }
    study = _study_of(patient__identifier="B-004321")
    assert large["name"][0] == large["id"][0] == large["accession"][0] == [study]
    newest = Study.objects.order_by("-study_date", "-id").values_list("pk", flat=True)
    assert large["every patient"][0] == list(newest[:50])  # the default page size
    unsearched = _listed(staff_api, {})
    # A search costs no query of its own: its reading is read with the model versions
    # (filter_facts), a statement the filters ran already. Token (twice), two for the
    # permissions, the facts, the page, the page's study results, its lesions (none
    # here: one query; with lesions, two), and one insert recording the page's studies.
    counts = {
        (queries, audit) for _, queries, audit in [*small.values(), *large.values()]
    }
    assert counts == {unsearched[1:]} == {(8, 1)}


def test_the_audit_records_each_listed_study_and_a_search_needs_the_permission(
    staff_api, as_role, user
):
    bulk_studies(3, user)
    AccessRecord.objects.all().delete()
    listed, _, _ = _listed(staff_api, {"q": "b-000002"})
    records = AccessRecord.objects.filter(detail="api study list")
    assert listed and sorted(int(r.object_id) for r in records) == sorted(listed)
    assert {r.user_id for r in records} == {staff_api.user.pk}
    nobody = as_role(None)
    assert nobody.get(URL, BY_ID).status_code == 403


def test_both_readings_of_a_search_keep_the_same_studies(user):
    bulk_studies(40, user)
    for term in ("Bulk Person 1", "b-00002", "ACC00003", "Bulk", "nobody"):
        searched = DashboardFilters(search=term)
        few = filtered_studies(replace(searched, search_broad=False))
        many = filtered_studies(replace(searched, search_broad=True))
        assert list(few.values_list("pk", flat=True)) == list(
            many.values_list("pk", flat=True)
        )
    with_result = DashboardFilters(search="Bulk Person 1", label="malignant")
    assert set(
        filtered_studies(replace(with_result, search_broad=False)).values_list("pk")
    ) == set(
        filtered_studies(replace(with_result, search_broad=True)).values_list("pk")
    )

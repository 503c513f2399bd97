"""The worklist's keyset pages and the reading order's neighbours, checked against
the whole worklist as the database orders it (NULL probabilities included, which
PostgreSQL and SQLite put at opposite ends)."""

from __future__ import annotations

import datetime
import re

import pytest
from django.urls import reverse

from portal.clinical.models import Study
from portal.clinical.services import patient_create, study_create
from portal.keyset import InvalidCursor
from portal.review import selectors

# (suspicious, max_malignant, days ago): ties on every column but the id, and NULLs.
WAITING = [
    (True, 0.95, 3),
    (True, 0.85, 1),
    (True, 0.85, 1),
    (True, None, 2),
    (False, 0.7, 5),
    (False, 0.7, 5),
    (False, 0.7, 4),
    (False, None, 6),
    (False, None, 6),
    (False, 0.2, 1),
    (False, 0.05, 9),
]


@pytest.fixture
def waiting(user):
    """The studies above on the worklist (their kept columns set as the review
    services would), and one read study that is not on it."""
    today = datetime.date(2026, 6, 1)
    for n, (suspicious, malignant, days) in enumerate([*WAITING, (False, 0.99, 0)]):
        patient = patient_create(identifier=f"W{n}", name=f"Waiting {n}")
        study = study_create(patient=patient, created_by=user)
        Study.objects.filter(pk=study.pk).update(
            awaiting_review=n < len(WAITING),
            suspicious=suspicious,
            max_malignant=malignant,
            study_date=today - datetime.timedelta(days=days),
        )
    ordered = list(selectors.worklist().values_list("pk", flat=True))
    assert len(ordered) == len(WAITING)
    return ordered


def _walk(size, *, back_from=None):
    """Page ids walking forward from the top, or back from the cursor `back_from`."""
    pages = []
    page = selectors.worklist_page(size=size, before=back_from)
    while True:
        pages.append([study.pk for study in page])
        if back_from is None:
            if not page.has_next():
                return pages
            page = selectors.worklist_page(size=size, after=page.next_cursor)
        else:
            if not page.has_previous():
                return pages[::-1]
            page = selectors.worklist_page(size=size, before=page.previous_cursor)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 11, 20])
def test_the_pages_walk_the_worklist_in_its_order_both_ways(waiting, size):
    forward = _walk(size)
    assert [pk for page in forward for pk in page] == waiting
    assert all(len(page) == size for page in forward[:-1])
    if len(forward) > 1:
        # Back from the last page: the same pages, the first one included.
        last = selectors.worklist_page(size=size, after=None)
        for _ in forward[1:]:
            last = selectors.worklist_page(size=size, after=last.next_cursor)
        assert last.previous_cursor is not None
        back = _walk(size, back_from=last.previous_cursor)
        assert back == forward[:-1]
    page = selectors.worklist_page(size=size)
    assert page.count == len(WAITING) and not page.has_previous()


def test_a_cursor_the_worklist_did_not_make_is_refused(waiting):
    for cursor in ("not-a-cursor", "WyJ4Il0", "WzEsMiwzXQ"):
        with pytest.raises(InvalidCursor):
            selectors.worklist_page(size=2, after=cursor)


def test_the_worklist_page_links_walk_it_and_a_forged_cursor_shows_the_top(
    client, radiologist, waiting, monkeypatch
):
    monkeypatch.setattr("portal.review.views.PAGE_SIZE", 4)
    client.force_login(radiologist)
    url, seen = reverse("review:worklist"), []
    while url:
        response = client.get(url)
        assert response.status_code == 200
        seen += [study.pk for study in response.context["studies"]]
        found = re.search(r'<a href="(\?after=[^"]*)" rel="next">', response.text)
        url = reverse("review:worklist") + found.group(1) if found else None
    assert seen == waiting
    forged = client.get(reverse("review:worklist") + "?after=forged")
    assert [s.pk for s in forged.context["studies"]] == waiting[:4]
    assert "not one of this list" in forged.text


def test_the_reading_order_finds_a_studys_neighbours_without_reading_it_whole(
    waiting, django_assert_max_num_queries
):
    for index, study_id in enumerate(waiting):
        found = selectors._worklist_neighbours(study_id, only_study=False)
        assert found.index == index
        assert found.studies == len(waiting)
        assert found.previous == (waiting[index - 1] if index else None)
        assert found.following == waiting[index + 1 : index + 2]
        assert found.top == waiting[:2]
    read = Study.objects.get(awaiting_review=False)
    off = selectors._worklist_neighbours(read.pk, only_study=False)
    assert (off.index, off.studies, off.previous, off.following) == (
        None,
        len(waiting),
        None,
        [],
    )
    # Study N of M reads the place, not the list: a fixed number of queries.
    with django_assert_max_num_queries(6):
        selectors._worklist_neighbours(waiting[5], only_study=False)

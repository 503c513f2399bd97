"""Grouping a study's images into lesions in a real browser (Playwright driving Debian's
Chromium) at 1366x768: with the keyboard only, a radiologist puts two views in a new
lesion from the review page while a draft note is being written (the note stays), the
page still fits the window, and the study page shows the lesion's result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e import test_browser_review as review_workflow
from tests.portal.review.conftest import analysed_scan

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

chromium = review_workflow.chromium
people = review_workflow.people
screenshots = review_workflow.screenshots
_in_thread = review_workflow._in_thread
VIEWPORT = {"width": 1366, "height": 768}


@pytest.fixture
def study_scans(people: dict[str, Any], media_root: Path) -> dict[str, Any]:
    """One study, three analysed views: file name -> scan."""
    from portal.accounts.roles import STAFF
    from portal.clinical.services import patient_create, study_create

    staff = people[STAFF]
    study = study_create(
        patient=patient_create(identifier="LES-1", name="Lesion Person"),
        created_by=staff,
    )
    scans = {}
    for filename, malignant in (("l1.png", 0.35), ("l2.png", 0.65), ("r1.png", 0.9)):
        rest = (1 - malignant) / 2
        scans[filename] = analysed_scan(
            study,
            staff,
            filename=filename,
            probabilities={"normal": rest, "benign": rest, "malignant": malignant},
        )
    return scans


def _lesion_labels() -> list[str | None]:
    from portal.clinical.models import Scan

    scans = Scan.objects.select_related("lesion").order_by("pk")
    return [scan.lesion.label if scan.lesion else None for scan in scans]


def _set_lesion(page: Any, option_key: str, expected: str) -> None:
    """Choose with the keyboard in the focused select, then press the button."""
    page.focus("#lesion-choice")
    page.keyboard.press(option_key)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "lesion-save"
    page.keyboard.press("Enter")
    page.wait_for_function(
        "text => document.getElementById('lesion-status').textContent === text",
        arg=expected,
    )


def test_a_reader_groups_two_views_without_losing_the_draft(
    live_server, people, study_scans, screenshots, chromium
):
    from portal.accounts.roles import RADIOLOGIST

    base = live_server.url
    page = review_workflow._log_in(
        chromium, base, people[RADIOLOGIST].username, viewport=VIEWPORT
    )

    first, second = study_scans["l1.png"], study_scans["l2.png"]
    page.goto(f"{base}/scans/{first.pk}/review/")
    page.wait_for_selector("#viewer[data-ready=true]")
    page.keyboard.press("e")  # write in the note, not saved
    page.keyboard.type("draft words")
    page.keyboard.press("Escape")
    # End picks the last option, "new lesion"; keys in the list fire no shortcut.
    _set_lesion(page, "End", "l1.png: lesion A.")
    assert page.input_value("#id_note") == "draft words"
    assert page.url.endswith(f"/scans/{first.pk}/review/")
    chosen = page.eval_on_selector(
        "#lesion-choice", "s => s.options[s.selectedIndex].text"
    )
    assert chosen == "A (1 image)"
    assert page.evaluate("window.scrollY") == 0
    assert page.evaluate(
        "document.scrollingElement.scrollHeight <= window.innerHeight + 1"
    ), "the review page scrolls"
    screenshots(page, "01-lesion-set")

    page.goto(f"{base}/scans/{second.pk}/review/")
    page.wait_for_selector("#viewer[data-ready=true]")
    # none, A (1 image), new lesion: ArrowDown from "none" is A.
    _set_lesion(page, "ArrowDown", "l2.png: lesion A.")
    assert _in_thread(_lesion_labels) == ["A", "A", None]

    page.goto(f"{base}/studies/{first.study_id}/")
    line = page.inner_text("#lesion-malignancies")
    assert "Lesion A: 65.0%" in line and "l2.png" in line, line
    assert "90.0%" in page.inner_text("#study-malignancy")  # r1.png, in no lesion
    screenshots(page, "02-study-page")
    page.context.close()

"""A radiologist's reading session in a real browser (Playwright driving Debian's
Chromium) at 1366x768: from the worklist, five scans signed in a row with the keyboard
only, each landing on the next unsigned scan, the Sign button in view without scrolling;
the agreement monitor then counts the five readings."""

from __future__ import annotations

import re
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

# (study, file name, probabilities): the model's label is the most probable class.
SCANS = (
    ("A", "a1.png", {"normal": 0.05, "benign": 0.05, "malignant": 0.9}),
    ("A", "a2.png", {"normal": 0.1, "benign": 0.3, "malignant": 0.6}),
    ("B", "b1.png", {"normal": 0.1, "benign": 0.1, "malignant": 0.8}),
    ("B", "b2.png", {"normal": 0.2, "benign": 0.5, "malignant": 0.3}),
    ("C", "c1.png", {"normal": 0.4, "benign": 0.1, "malignant": 0.5}),
    ("C", "c2.png", {"normal": 0.7, "benign": 0.1, "malignant": 0.2}),
)
# Once a1 is signed, study A (60%) ranks below B (80%): its a2 still comes next.
READING_ORDER = ("a1.png", "a2.png", "b1.png", "b2.png", "c1.png", "c2.png")


@pytest.fixture
def reading_list(people: dict[str, Any], media_root: Path) -> dict[str, int]:
    """Three studies, six analysed scans waiting for a reading: file name -> scan id."""
    from portal.accounts.roles import STAFF
    from portal.clinical.services import patient_create, study_create

    staff = people[STAFF]
    studies = {}
    ids = {}
    for name, filename, probabilities in SCANS:
        if name not in studies:
            patient = patient_create(identifier=f"READ-{name}", name=f"Reader {name}")
            studies[name] = study_create(patient=patient, created_by=staff)
        scan = analysed_scan(
            studies[name],
            staff,
            filename=filename,
            probabilities=probabilities,
            explained_class="malignant",
        )
        ids[filename] = scan.pk
    return ids


def _sign_button_in_view(page: Any) -> None:
    assert page.evaluate("window.scrollY") == 0
    # Nothing to scroll to: the page fits the window.
    assert page.evaluate(
        "document.scrollingElement.scrollHeight <= window.innerHeight + 1"
    ), "the review page scrolls"
    box = page.locator("#sign-next").bounding_box()
    assert box is not None
    assert box["y"] >= 0 and box["y"] + box["height"] <= VIEWPORT["height"], box
    assert box["x"] >= 0 and box["x"] + box["width"] <= VIEWPORT["width"], box
    viewer = page.locator("#viewer").bounding_box()
    panel = page.locator("#decision-panel").bounding_box()
    assert viewer["x"] + viewer["width"] <= panel["x"], "viewer and panel side by side"
    assert viewer["height"] > 400, viewer


def _arrive(page: Any, base: str, scan_id: int) -> None:
    page.wait_for_url(re.compile(rf".*/scans/{scan_id}/review/\?flow=worklist$"))
    page.wait_for_selector("#viewer[data-ready=true]")
    assert page.inner_text("#review-state") == "Not reviewed yet."
    _sign_button_in_view(page)


def _keys(page: Any, *keys: str) -> None:
    for key in keys:
        page.keyboard.press(key)


def _sign(page: Any) -> None:
    with page.expect_navigation():
        page.keyboard.press("s")


def _readings(ids: dict[str, int]) -> dict[str, tuple[Any, ...]]:
    from portal.review.models import Review

    reviews = Review.objects.filter(signed_at__isnull=False).select_related("scan")
    return {
        r.scan.original_filename: (r.agrees_with_model, r.label, r.birads, r.note)
        for r in reviews
    }


def test_five_scans_signed_in_a_row_from_the_keyboard(
    live_server, people, reading_list, screenshots, chromium
):
    from portal.accounts.roles import RADIOLOGIST

    base = live_server.url
    page = review_workflow._log_in(
        chromium, base, people[RADIOLOGIST].username, viewport=VIEWPORT
    )
    page.goto(f"{base}/worklist/")
    assert "a1.png" in page.inner_text("#worklist-rows")
    screenshots(page, "01-worklist")
    order = [reading_list[name] for name in READING_ORDER]

    # From the worklist, N starts reading at its most suspicious unsigned image.
    with page.expect_navigation():
        page.keyboard.press("n")
    _arrive(page, base, order[0])
    screenshots(page, "02-first-scan")
    # O hides and shows the overlays, R resets the view.
    canvas = page.locator("#viewer-canvas")
    assert canvas.get_attribute("data-layers") == "outline"
    page.keyboard.press("o")
    assert canvas.get_attribute("data-layers") == ""
    page.keyboard.press("o")
    shown = set(canvas.get_attribute("data-layers").split())
    assert shown == {"outline", "gradcam", "seg_gradcam"}
    page.click("#zoom-in")
    page.keyboard.press("r")
    assert float(canvas.get_attribute("data-zoom")) == 1
    # Agree, BI-RADS 4 then 4A, and a note: typing in it fires no shortcut.
    _keys(page, "a", "4", "4", "e")
    page.keyboard.type("Spiculated mass, BI-RADS 5 not 2; biopsy.")
    assert page.input_value("select[name=birads]") == "4A"
    assert page.url.endswith(f"/scans/{order[0]}/review/?flow=worklist")
    page.keyboard.press("Escape")
    _sign(page)

    # a2: correct to benign, BI-RADS 3.
    _arrive(page, base, order[1])
    assert "a1.png: review version 1 signed." in page.inner_text(".messages")
    _keys(page, "b", "3")
    _sign(page)

    # b1: agree, BI-RADS 5.
    _arrive(page, base, order[2])
    _keys(page, "a", "5")
    _sign(page)

    # b2 (model: benign): correct to malignant with BI-RADS 2 warns; 4B does not.
    _arrive(page, base, order[3])
    _keys(page, "m", "2")
    warning = page.locator("#birads-warning")
    assert warning.is_visible()
    assert "BI-RADS 2 is unusual for a reading of malignant" in warning.inner_text()
    screenshots(page, "03-birads-warning")
    _keys(page, "4", "4", "4")
    assert page.input_value("select[name=birads]") == "4B"
    assert not warning.is_visible()
    _sign(page)

    # c1: agree, BI-RADS 4; then the next unsigned scan, c2, opens.
    _arrive(page, base, order[4])
    _keys(page, "a", "4")
    _sign(page)
    _arrive(page, base, order[5])
    screenshots(page, "04-sixth-scan")

    readings = _in_thread(_readings, reading_list)
    assert readings == {
        "a1.png": (
            True,
            "malignant",
            "4A",
            "Spiculated mass, BI-RADS 5 not 2; biopsy.",
        ),
        "a2.png": (False, "benign", "3", ""),
        "b1.png": (True, "malignant", "5", ""),
        "b2.png": (False, "malignant", "4B", ""),
        "c1.png": (True, "malignant", "4", ""),
    }

    # The agreement monitor counts the five readings: three agreed.
    page.goto(f"{base}/agreement/")
    summary = page.inner_text("#agreement-rate")
    assert summary == "60.0%", summary
    assert "over 5 signed reviews (3 agreed)" in page.inner_text("#agreement-summary")
    screenshots(page, "05-agreement")
    page.context.close()

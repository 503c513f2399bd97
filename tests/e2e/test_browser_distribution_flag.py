"""A radiologist in a real browser (Playwright driving Debian's Chromium) meets a result
"unusual for this model" (a caution, the result still shown) and a scan the gate
withheld (not a breast ultrasound: nothing of the model shown, the notice says why):
the study page's script and the review page both show them, with their scores, and
say nothing for a familiar scan."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import test_browser_review as review_workflow
from tests.portal.review.conftest import FLAGGED, analysed_scan, withheld_scan

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

# The review workflow's browser, users and screenshots, shared by name.
chromium = review_workflow.chromium
people = review_workflow.people
screenshots = review_workflow.screenshots
WARNING = "Unusual for this model."
WITHHELD = "Not analysed: not a breast ultrasound image."


@pytest.fixture
def flagged_study(people: dict[str, Any], media_root: Path) -> dict[str, int]:
    """A study with one scan flagged out of distribution and one familiar scan."""
    from portal.accounts.roles import STAFF
    from portal.clinical.services import patient_create, study_create

    staff = people[STAFF]
    patient = patient_create(identifier="OOD-0001", name="Flag Test Patient")
    study = study_create(patient=patient, created_by=staff, accession_number="OOD-1")
    flagged = analysed_scan(study, staff, filename="holiday-photo.png", **FLAGGED)
    familiar = analysed_scan(
        study,
        staff,
        filename="ultrasound.png",
        in_distribution=True,
        ood_score=12.0,
        ood_threshold=41.5,
        explained_class="malignant",
    )
    withheld = withheld_scan(study, staff, filename="referral-letter.png")
    return {
        "study": study.pk,
        "flagged": flagged.pk,
        "familiar": familiar.pk,
        "withheld": withheld.pk,
    }


def test_a_radiologist_sees_the_caution_and_the_withheld_notice(
    live_server, people, flagged_study, screenshots, chromium
):
    from portal.accounts.roles import RADIOLOGIST

    base = live_server.url
    page = review_workflow._log_in(chromium, base, people[RADIOLOGIST].username)

    # Study page: results are drawn by its script from the status feed.
    page.goto(f"{base}/studies/{flagged_study['study']}/")
    flagged_card = page.locator(f"#scan-{flagged_study['flagged']}")
    flagged_card.locator(".probabilities").wait_for()
    caution = flagged_card.get_by_role("note")
    assert caution.inner_text().startswith("⚠ " + WARNING)
    assert "a caution, not a verdict" in caution.inner_text()
    assert "score 97.25, threshold 41.50" in caution.inner_text()
    familiar_card = page.locator(f"#scan-{flagged_study['familiar']}")
    familiar_card.locator(".probabilities").wait_for()
    assert familiar_card.get_by_role("note").count() == 0
    withheld_card = page.locator(f"#scan-{flagged_study['withheld']}")
    notice = withheld_card.get_by_role("alert")
    notice.wait_for()
    assert notice.inner_text().startswith(WITHHELD)
    assert "Gate score 9.75" in notice.inner_text()
    assert withheld_card.locator(".probabilities").count() == 0
    assert withheld_card.locator(".artifacts figure").count() == 0
    assert "87.6" not in withheld_card.inner_text()
    assert "malignant" not in withheld_card.inner_text()
    screenshots(page, "01-study-page")

    # Review page: the warning comes before the viewer, with its figures.
    page.click(f"#scan-{flagged_study['flagged']} a.review-link")
    page.wait_for_url(re.compile(rf".*/scans/{flagged_study['flagged']}/review/$"))
    page.wait_for_selector("#viewer[data-ready=true]")
    note = page.locator(".ood-warning")
    assert note.count() == 1 and note.is_visible()
    assert WARNING in note.inner_text()
    assert "Distance score 97.25, threshold 41.50" in note.inner_text()
    box, viewer = note.bounding_box(), page.locator("#viewer").bounding_box()
    assert box["y"] + box["height"] <= viewer["y"], "the caution is not above the scan"
    assert (
        page.inner_text("#gradcam-class")
        == "The classification Grad-CAM explains the class malignant."
    )
    screenshots(page, "02-review-page")

    page.goto(f"{base}/scans/{flagged_study['familiar']}/review/")
    page.wait_for_selector("#viewer[data-ready=true]")
    assert page.locator(".ood-warning, .withheld-notice").count() == 0

    # The withheld scan: the notice above the scan, no overlay to switch on, no result.
    page.goto(f"{base}/scans/{flagged_study['withheld']}/review/")
    page.wait_for_selector("#viewer[data-ready=true]")
    notice = page.locator(".withheld-notice")
    assert notice.is_visible() and WITHHELD in notice.inner_text()
    assert page.locator(".layer-toggle").count() == 0
    assert page.locator("table.probabilities").count() == 0
    assert "gate score 9.75" in page.inner_text("#withheld-verdict")
    screenshots(page, "03-withheld-review-page")
    page.context.close()

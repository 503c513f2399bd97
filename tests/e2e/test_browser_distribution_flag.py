"""A radiologist in a real browser (Playwright driving Debian's Chromium) meets a result
outside what the model was trained on: the study page's script and the review page both
show the warning, with its score and threshold, and say nothing for a familiar scan."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import test_browser_review as review_workflow
from tests.portal.review.conftest import FLAGGED, analysed_scan

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

# The review workflow's browser, users and screenshots, shared by name.
chromium = review_workflow.chromium
people = review_workflow.people
screenshots = review_workflow.screenshots
WARNING = "Outside what the model was trained on — result not reliable."


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
    return {"study": study.pk, "flagged": flagged.pk, "familiar": familiar.pk}


def test_a_radiologist_sees_the_warning_on_a_flagged_analysis(
    live_server, people, flagged_study, screenshots, chromium
):
    from portal.accounts.roles import RADIOLOGIST

    base = live_server.url
    page = review_workflow._log_in(chromium, base, people[RADIOLOGIST].username)

    # Study page: results are drawn by its script from the status feed.
    page.goto(f"{base}/studies/{flagged_study['study']}/")
    flagged_card = page.locator(f"#scan-{flagged_study['flagged']}")
    flagged_card.locator(".probabilities").wait_for()
    warning = flagged_card.get_by_role("alert")
    assert warning.inner_text().startswith("⚠ " + WARNING)
    assert "score 97.25, threshold 41.50" in warning.inner_text()
    familiar_card = page.locator(f"#scan-{flagged_study['familiar']}")
    familiar_card.locator(".probabilities").wait_for()
    assert familiar_card.get_by_role("alert").count() == 0
    screenshots(page, "01-study-page")

    # Review page: the warning comes before the viewer, with its figures.
    page.click(f"#scan-{flagged_study['flagged']} a.review-link")
    page.wait_for_url(re.compile(rf".*/scans/{flagged_study['flagged']}/review/$"))
    page.wait_for_selector("#viewer[data-ready=true]")
    alert = page.get_by_role("alert")
    assert alert.count() == 1 and alert.is_visible()
    assert WARNING in alert.inner_text()
    assert "Out-of-distribution score 97.25, threshold 41.50" in alert.inner_text()
    box, viewer = alert.bounding_box(), page.locator("#viewer").bounding_box()
    assert box["y"] + box["height"] <= viewer["y"], "the warning is not above the scan"
    assert (
        page.inner_text("#gradcam-class")
        == "The classification Grad-CAM explains the class malignant."
    )
    screenshots(page, "02-review-page")

    page.goto(f"{base}/scans/{flagged_study['familiar']}/review/")
    page.wait_for_selector("#viewer[data-ready=true]")
    assert page.get_by_role("alert").count() == 0
    page.context.close()

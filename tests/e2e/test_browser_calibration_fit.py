"""An administrator in a real browser (Playwright driving Debian's Chromium) fits a site
calibration for one scanner model: the page queues the fit, a real Celery worker on
Redis fits it, and the page's script, polling the fit, shows the result without a
reload by hand; then activates it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ml.site_calibration import MIN_READS_FOR_SITE_CALIBRATION
from portal.clinical.scanners import Scanner
from tests.e2e import test_browser_review as review_workflow
from tests.portal.review import test_calibration_task as calibration_task

# The calibration tests' model.json (their conftest's fixtures, used by name).
from tests.portal.review.conftest import (  # noqa: F401
    calibration_model,
    calibration_model_fields,
    signed_analyses,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("calibration_model"),
]

chromium = review_workflow.chromium
# The calibration task test's Redis queue and real worker, shared by name.
broker = calibration_task.broker
worker = calibration_task.worker
people = review_workflow.people
screenshots = review_workflow.screenshots
ACME = Scanner("Acme Medical", "Sono 7")
N = MIN_READS_FOR_SITE_CALIBRATION + 10


@pytest.fixture
def acme_reads(people: dict[str, Any], media_root: Path) -> None:
    from portal.accounts.roles import STAFF
    from portal.clinical.models import Scan

    analyses = signed_analyses(people[STAFF], n=N, signed=True, seed=21)
    Scan.objects.filter(pk__in=[a.scan_id for a in analyses]).update(
        scanner_manufacturer=ACME.manufacturer, scanner_model=ACME.model
    )


def test_an_administrator_fits_for_a_scanner_model_and_the_page_shows_it(
    live_server, people, acme_reads, worker, screenshots, chromium
):
    from portal.accounts.roles import ADMINISTRATOR

    base = live_server.url
    page = review_workflow._log_in(chromium, base, people[ADMINISTRATOR].username)
    page.goto(f"{base}/calibration/")
    choice = f"Acme Medical Sono 7: {N} signed reads"
    page.select_option("#fit-form select[name=scanner]", label=choice)
    page.fill("#fit-form input[name=target_sensitivity]", "0.9")
    page.click("#fit-form button[type=submit]")
    page.locator("#calibration-fits tr[data-status]").first.wait_for()
    assert "queued: a worker fits it" in page.content()
    screenshots(page, "fit-queued")

    # No reload by hand: the page's script polls the fit and shows the page again.
    page.locator("#calibration-fits tr[data-status=succeeded]").wait_for(
        timeout=240_000
    )
    heading = page.locator("section.calibration h2").first.inner_text()
    assert heading.startswith("Calibration 1 for Acme Medical Sono 7")
    screenshots(page, "fit-done")

    page.click("section.calibration .activate-form button")
    page.locator("#active-version").wait_for()
    assert page.locator("#active-version").inner_text() == "1"
    assert "Calibration 1 is active for Acme Medical Sono 7" in page.content()

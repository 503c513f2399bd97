"""The study page's bulk upload in a real browser (Playwright driving Debian's Chromium).

Staff choose a zip and a loose image, see the transfer progress, land on the study page
with the files that were not taken listed, and watch the batch's progress bar fill as
analyses finish, without reloading. Results are written by the test in place of a
worker (the real worker path is covered by test_api_pipeline and test_pipeline).
"""

from __future__ import annotations

import re
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from portal.accounts.roles import STAFF, assign_role
from tests.conftest import SCANS_DIR

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "bulk-upload"
PASSWORD = "browser-test-password-42!"


@pytest.fixture
def chromium(monkeypatch: pytest.MonkeyPatch) -> Any:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium")
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "1")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu"],
            headless=True,
        )
        yield browser
        browser.close()


def in_thread(work: Callable[[], Any]) -> Any:
    """Run ORM work in a thread of its own that closes its connection when done.

    Inside Playwright's sync API the test body's ORM calls would open connections in
    another context, which nothing closes before the test database is dropped.
    """
    from django.db import connections

    result: list[Any] = []

    def run() -> None:
        try:
            result.append(work())
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if not result:
        raise RuntimeError("database work in the helper thread failed")
    return result[0]


@pytest.fixture
def no_broker(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The live server runs in this process: record messages instead of sending them."""
    sent: list[int] = []
    monkeypatch.setattr(
        "portal.analyses.queue.send_analysis",
        lambda analysis_id, **kwargs: sent.append(analysis_id),
    )
    return sent


def test_a_zip_upload_shows_its_report_and_live_progress(
    live_server,
    chromium,
    no_broker,
    django_user_model,
    media_root,
    weights_dir,
    tmp_path,
):
    from portal.analyses.models import Analysis
    from portal.clinical.services import patient_create, study_create

    def set_up() -> Any:
        user = django_user_model.objects.create_user(username="sono", password=PASSWORD)
        assign_role(user, STAFF)
        return study_create(
            patient=patient_create(identifier="B-1", name="Browser Patient"),
            created_by=user,
        )

    study = in_thread(set_up)
    archive = tmp_path / "exam.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(SCANS_DIR / "benign/case009.png", "left/one.png")
        zf.write(SCANS_DIR / "malignant/case205.png", "left/two.png")
        zf.writestr("left/notes.txt", b"not an image")
    loose = tmp_path / "three.jpg"
    loose.write_bytes((SCANS_DIR / "normal/case213.jpg").read_bytes())
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    context = chromium.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", "sono")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.goto(f"{live_server.url}/studies/{study.pk}/")
    page.set_input_files("#upload-form input[type=file]", [str(archive), str(loose)])
    page.click("#upload-form button[type=submit]")
    page.wait_for_url(re.compile(r"\?batch=\d+"), timeout=60_000)

    panel = page.locator("#last-upload")
    assert "left/notes.txt" in panel.inner_text()
    assert "not a recognised image" in panel.inner_text()
    assert panel.locator("[data-count=images]").inner_text() == "3"
    assert panel.locator("[data-count=analysed]").inner_text() == "0"
    page.screenshot(path=str(ARTIFACTS / "after-upload.png"), full_page=True)
    assert len(no_broker) == 3

    def finish(analysis_id: int) -> bool:
        analysis = Analysis.objects.get(pk=analysis_id)
        analysis.status = Analysis.Status.SUCCEEDED
        analysis.label = "benign"
        analysis.confidence = 0.8
        analysis.probabilities = {"normal": 0.1, "benign": 0.8, "malignant": 0.1}
        analysis.lesion_area_fraction = 0.1
        analysis.save()
        return True

    for index, analysis_id in enumerate(sorted(no_broker)):
        in_thread(lambda analysis_id=analysis_id: finish(analysis_id))
        expected = str(index + 1)
        deadline = time.monotonic() + 30
        while panel.locator("[data-count=analysed]").inner_text() != expected:
            assert time.monotonic() < deadline, "the progress bar did not move"
            time.sleep(0.2)
    assert page.locator("#last-upload progress").evaluate("bar => bar.value") == 3
    assert panel.locator(".batch-done").is_visible()
    page.screenshot(path=str(ARTIFACTS / "analysed.png"), full_page=True)
    assert not errors, errors

    batch_id = re.search(r"batch=(\d+)", page.url).group(1)
    page.click(f"#last-upload a[href$='/uploads/{batch_id}/']")
    # Two images and a text file from the zip, and the loose image.
    assert page.locator(".upload-report tbody tr").count() == 4
    text = page.locator(".upload-report").inner_text()
    assert "left/one.png" in text and "three.jpg" in text and "no images" not in text
    page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    # Stop polling and close the browser's keep-alive connections now: each holds a
    # server thread and its database connection, which would outlive the test database.
    context.close()
    time.sleep(1)

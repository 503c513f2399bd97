"""Administrators on the model registry page (/models/) in a real browser (Playwright
driving Debian's Chromium) on a live server: one promotes a version with a reason (the
activation log and the audit trail show it) and rolls back; a version whose comparison
says "worse" is refused to one administrator, asked for, and promoted only when a second
administrator confirms."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_MODEL_VERSION
from tests.e2e import test_browser_review as review_workflow
from tests.portal.registry.test_model_versions import model_folder

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

chromium = review_workflow.chromium
people = review_workflow.people
screenshots = review_workflow.screenshots
WORSE = "worse on site:site-export: recall_malignant"


@pytest.fixture
def second_admin(django_user_model: Any) -> Any:
    from portal.accounts.roles import ADMINISTRATOR, assign_role

    user = django_user_model.objects.create_user(
        username="second-admin", password=review_workflow.PASSWORD
    )
    assign_role(user, ADMINISTRATOR)
    return user


@pytest.fixture
def versions(
    settings: Any, tmp_path: Path, weights_dir: Path, people: dict[str, Any]
) -> dict[str, str]:
    """Two fine-tuned versions installed beside the shipped one, each compared with it:
    one not worse on any measure, one worse on malignant recall."""
    from portal.accounts.roles import ADMINISTRATOR
    from portal.registry.services import model_version_install

    settings.ML_MODELS_DIR = tmp_path / "models"
    installed = {}
    for seed, worse in (("good", ()), ("worse", ("recall_malignant",))):
        folder = model_folder(tmp_path / "made", seed, worse=worse)
        record = model_version_install(
            source=folder, installed_by=people[ADMINISTRATOR]
        )
        installed[seed] = record.version
    return installed


def _version(page: Any, version: str) -> Any:
    return page.locator(f'section.model-version[data-version="{version}"]')


def _active(page: Any) -> str:
    return page.locator("#active-model").inner_text()


def _history_first_row(page: Any) -> str:
    return page.locator("#model-history tbody tr").first.inner_text()


def _promotion_audited(version: str, username: str, reason: str) -> None:
    """The activation row names who and why, and the audit trail recorded its
    creation by that user."""
    from auditlog.models import LogEntry

    from portal.registry.models import ModelActivation

    activation = ModelActivation.objects.filter(
        role="active", model_version__version=version
    ).latest("activated_at", "id")
    assert activation.activated_by.username == username
    assert activation.reason == reason
    entry = LogEntry.objects.get_for_object(activation).get()
    assert entry.action == LogEntry.Action.CREATE
    assert entry.actor.username == username


def test_administrators_promote_with_a_reason_confirm_a_worse_one_and_roll_back(
    live_server, people, second_admin, versions, screenshots, chromium
):
    from portal.accounts.roles import ADMINISTRATOR

    base = live_server.url
    first = people[ADMINISTRATOR].username
    page = review_workflow._log_in(chromium, base, first)
    page.goto(f"{base}/models/")
    assert _active(page) == TEST_MODEL_VERSION
    screenshots(page, "01-registry")

    # A version its comparison supports: promoted by one administrator, with a reason.
    good = _version(page, versions["good"])
    good.locator(".promote-form input[name=reason]").fill("better on our scans")
    good.locator(".promote-form button[type=submit]").click()
    page.wait_for_url(re.compile(r".*/models/$"))
    assert _active(page) == versions["good"]
    assert f"{versions['good']} is active" in page.locator(".messages").inner_text()
    row = _history_first_row(page)
    assert versions["good"] in row and first in row and "better on our scans" in row
    review_workflow._in_thread(
        _promotion_audited, versions["good"], first, "better on our scans"
    )
    screenshots(page, "02-promoted")

    # The audit trail's change log, as an administrator browses it.
    page.goto(f"{base}/admin/auditlog/logentry/?q={versions['good']}")
    change_log = page.inner_text("#result_list")
    assert "model activation - active: " + versions["good"] in change_log
    assert first in change_log
    screenshots(page, "03-change-log")

    # Rolled back, with a reason: the shipped model is active again.
    page.goto(f"{base}/models/")
    page.fill("#model-rollback-form input[name=reason]", "more recalls at triage")
    page.click("#model-rollback-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/models/$"))
    assert _active(page) == TEST_MODEL_VERSION
    row = _history_first_row(page)
    assert "Rollback" in row and "more recalls at triage" in row
    screenshots(page, "04-rolled-back")

    # A version its comparison judges worse: refused to one administrator alone.
    worse = _version(page, versions["worse"])
    assert WORSE in worse.locator(".promote-form .warning").inner_text()
    worse.locator(".promote-form input[name=reason]").fill("the site calibration")
    worse.locator(".promote-form button[type=submit]").click()
    page.wait_for_url(re.compile(r".*/models/$"))
    assert _active(page) == TEST_MODEL_VERSION
    waiting = page.locator("#promotion-requests")
    assert versions["worse"] in waiting.inner_text() and WORSE in waiting.inner_text()
    assert waiting.locator("text=Confirm and promote").count() == 0  # not by the asker
    screenshots(page, "05-waiting")
    page.context.close()

    # The second administrator confirms it.
    other = review_workflow._log_in(chromium, base, second_admin.username)
    other.goto(f"{base}/models/")
    other.click("#promotion-requests >> text=Confirm and promote")
    other.wait_for_url(re.compile(r".*/models/$"))
    assert _active(other) == versions["worse"]
    row = _history_first_row(other)
    assert versions["worse"] in row and second_admin.username in row
    assert "over: " + WORSE in row
    screenshots(other, "06-confirmed")
    other.context.close()


def test_an_administrator_installs_a_zipped_version_from_the_page(
    live_server, settings, tmp_path, weights_dir, people, screenshots, chromium
):
    """The folder python -m ml finetune wrote, zipped, chosen in the page's file input:
    installed (not active), listed with its comparison, the bytes the version names."""
    import zipfile

    from ml.weights_io import read_meta
    from portal.accounts.roles import ADMINISTRATOR

    settings.ML_MODELS_DIR = tmp_path / "models"
    folder = model_folder(tmp_path / "made", "browser")
    archive = tmp_path / "finetuned.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(folder.iterdir()):
            bundle.write(path, f"out/{path.name}")
    version = read_meta(folder).version

    base = live_server.url
    page = review_workflow._log_in(chromium, base, people[ADMINISTRATOR].username)
    page.goto(f"{base}/models/")
    assert _version(page, version).count() == 0
    page.set_input_files("#model-upload-form input[name=archive]", str(archive))
    page.click("#model-upload-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/models/$"))
    said = page.locator(".messages").inner_text()
    assert f"{version} is installed, not active." in said
    listed = _version(page, version)
    assert listed.count() == 1
    assert listed.locator(".verdict-not-worse").count() == 3
    assert _active(page) == TEST_MODEL_VERSION
    for path in folder.iterdir():
        installed = settings.ML_MODELS_DIR / version / path.name
        assert installed.read_bytes() == path.read_bytes()
    screenshots(page, "07-installed-from-the-page")

"""The read-only calibration API: administrators only; the list a page at a time (keyset),
one calibration with its cross-validated report, and what is active per scanner model.
Aggregates only: no access record is written for them."""

from __future__ import annotations

from typing import Any

import pytest

from portal.audit.models import AccessRecord
from portal.clinical.scanners import SITE, Scanner
from portal.registry.services import calibration_activate, site_calibration_create
from tests.conftest import TEST_MODEL_VERSION

pytestmark = pytest.mark.django_db

ACME = Scanner("Acme Medical", "Sono 7")


def _calibration(user: Any, scanner: Scanner = SITE, **fields: Any) -> Any:
    return site_calibration_create(
        model_version=fields.pop("model_version", TEST_MODEL_VERSION),
        parameters={
            "version": 1,
            "classes": ["normal", "benign", "malignant"],
            "temperature": 1.1,
            "offsets": [0.0, 0.0, 0.4],
            "threshold": 0.3,
            "target_sensitivity": 0.9,
            "n": 120,
            "fitted_on": {},
        },
        evaluation={"n": 120, "before": {"ece": 0.09}, "after": {"ece": 0.03}},
        target_sensitivity=0.9,
        reads=120,
        created_by=user,
        scanner=scanner,
        ood_site_threshold=fields.pop("ood_site_threshold", None),
    )


@pytest.fixture
def admin_api(as_role: Any) -> Any:
    return as_role("administrator")


@pytest.mark.parametrize("role", ["staff", "radiologist", None])
def test_only_administrators_read_calibrations(as_role, api, role):
    client = as_role(role)
    calibration = _calibration(client.user)
    for url in (
        "/api/v1/calibrations/",
        f"/api/v1/calibrations/{calibration.pk}/",
        "/api/v1/calibrations/active/",
    ):
        assert client.get(url).status_code == 403
        assert api.get(url).status_code == 401


def test_the_list_comes_a_page_at_a_time_newest_first(admin_api):
    made = [_calibration(admin_api.user) for _ in range(3)]
    _calibration(admin_api.user, model_version="other-model")
    first = admin_api.get(
        "/api/v1/calibrations/", {"page_size": 2, "model_version": TEST_MODEL_VERSION}
    ).json()
    assert [row["version"] for row in first["results"]] == [3, 2]
    assert "evaluation" not in first["results"][0]
    second = admin_api.get(first["next"]).json()
    assert [row["id"] for row in second["results"]] == [made[0].pk]
    assert second["next"] is None
    everything = admin_api.get("/api/v1/calibrations/").json()["results"]
    assert {row["model_version"] for row in everything} == {
        TEST_MODEL_VERSION,
        "other-model",
    }
    assert not AccessRecord.objects.exists()


def test_one_calibration_with_its_report(admin_api):
    calibration = _calibration(admin_api.user, ACME, ood_site_threshold=8.5)
    body = admin_api.get(f"/api/v1/calibrations/{calibration.pk}/").json()
    assert body["scanner_manufacturer"] == "Acme Medical"
    assert body["scanner_model"] == "Sono 7"
    assert body["threshold"] == 0.3 and body["ood_site_threshold"] == 8.5
    assert body["evaluation"]["after"]["ece"] == 0.03
    assert body["parameters"]["temperature"] == 1.1
    assert body["created_by"] == admin_api.user.get_username()
    missing = admin_api.get("/api/v1/calibrations/999999/")
    assert missing.status_code == 404
    assert not AccessRecord.objects.exists()


def test_what_is_active_per_scanner_model(admin_api):
    user = admin_api.user
    site = _calibration(user)
    acme = _calibration(user, ACME)
    calibration_activate(
        model_version=TEST_MODEL_VERSION, calibration=site, activated_by=user
    )
    calibration_activate(
        model_version=TEST_MODEL_VERSION,
        calibration=acme,
        activated_by=user,
        scanner=ACME,
    )
    body = admin_api.get(
        "/api/v1/calibrations/active/", {"model_version": TEST_MODEL_VERSION}
    ).json()
    assert body["model_version"] == TEST_MODEL_VERSION
    rows = [
        (r["scanner_manufacturer"], r["scanner_model"], r["calibration"]["id"])
        for r in body["results"]
    ]
    assert rows == [("", "", site.pk), ("Acme Medical", "Sono 7", acme.pk)]
    assert [r["in_use"] for r in body["results"]] == [site.pk, acme.pk]

    # The scanner model rolled back to the site's: no calibration of its own, the
    # site's in use.
    calibration_activate(
        model_version=TEST_MODEL_VERSION,
        calibration=None,
        activated_by=user,
        scanner=ACME,
    )
    body = admin_api.get(
        "/api/v1/calibrations/active/", {"model_version": TEST_MODEL_VERSION}
    ).json()
    acme_row = body["results"][1]
    assert acme_row["calibration"] is None and acme_row["in_use"] == site.pk

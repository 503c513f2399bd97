"""The site calibration page and the biopsy outcome form: who may see, fit, activate
and roll back (only administrators), what the page says before enough reads, and the
case-mix panel of the agreement monitor."""

from __future__ import annotations

import pytest
from auditlog.models import LogEntry
from django.urls import reverse

from ml.site_calibration import MIN_READS_FOR_SITE_CALIBRATION, PRIOR_STRENGTHS
from portal.analyses.modelinfo import model_calibration
from portal.registry.models import CalibrationActivation, SiteCalibration
from portal.review.calibration import calibration_fit_run
from portal.review.models import CalibrationFit
from tests.conftest import TEST_MODEL_VERSION
from tests.portal.review.conftest import signed_analyses

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("calibration_model")]


def _calibration(user) -> SiteCalibration:
    from portal.registry.services import site_calibration_create

    return site_calibration_create(
        model_version=TEST_MODEL_VERSION,
        parameters={
            "version": 1,
            "classes": ["normal", "benign", "malignant"],
            "temperature": 1.0,
            "offsets": [0.0, 0.0, 0.5],
            "threshold": 0.3,
            "target_sensitivity": 0.9,
            "n": 120,
            "fitted_on": {},
        },
        evaluation={},
        target_sensitivity=0.9,
        reads=120,
        created_by=user,
    )


@pytest.mark.parametrize("role", ["staff", "radiologist"])
def test_only_administrators_see_fit_activate_or_roll_back(client, make_user, role):
    person = make_user(role, f"someone-{role}")
    calibration = _calibration(person)
    client.force_login(person)
    assert client.get(reverse("review:calibration")).status_code == 403
    assert (
        client.post(
            reverse("review:calibration"), {"target_sensitivity": "0.9"}
        ).status_code
        == 403
    )
    activate = reverse("review:calibration_activate", args=[calibration.pk])
    assert client.post(activate).status_code == 403
    assert client.post(reverse("review:calibration_rollback")).status_code == 403
    assert not CalibrationActivation.objects.exists()
    fit = CalibrationFit.objects.create(
        model_version=TEST_MODEL_VERSION,
        target_sensitivity=0.9,
        requested_by=person,
        status=CalibrationFit.Status.FAILED,
    )
    status = reverse("review:calibration_fit_status", args=[fit.pk])
    assert client.get(status).status_code == 403
    retry = reverse("review:calibration_fit_retry", args=[fit.pk])
    assert client.post(retry).status_code == 403
    fit.refresh_from_db()
    assert fit.status == "failed"
    assert not CalibrationFit.objects.exclude(pk=fit.pk).exists()


def test_anonymous_users_are_sent_to_log_in(client):
    response = client.get(reverse("review:calibration"))
    assert response.status_code == 302 and "login" in response["Location"]


def test_the_page_says_the_training_operating_point_is_used_before_enough_reads(
    client, administrator, user
):
    signed_analyses(user, n=6, signed=True)
    client.force_login(administrator)
    page = client.get(reverse("review:calibration")).content.decode()
    assert "the training sites' operating point" in page
    assert '<span id="signed-reads">6</span>' in page
    assert f"needs at least {MIN_READS_FOR_SITE_CALIBRATION}" in page
    assert 'id="not-enough-reads"' in page
    response = client.post(
        reverse("review:calibration"), {"target_sensitivity": "0.9"}, follow=True
    )
    assert (
        f"needs at least {MIN_READS_FOR_SITE_CALIBRATION} signed reads"
        in response.content.decode()
    )
    # Refused at the request: nothing queued, nothing fitted.
    assert not CalibrationFit.objects.exists()
    assert not SiteCalibration.objects.exists()


def test_an_administrator_fits_activates_and_rolls_back_through_the_page(
    client, administrator, user
):
    signed_analyses(user, n=MIN_READS_FOR_SITE_CALIBRATION + 10, signed=True)
    client.force_login(administrator)
    response = client.post(
        reverse("review:calibration"), {"target_sensitivity": "0.85"}, follow=True
    )
    # The page queues the fit (a worker runs it: test_calibration_task.py with a real
    # one); here the service the task calls runs it in the test's transaction.
    fit = CalibrationFit.objects.get()
    assert f"Fit {fit.pk} queued" in response.content.decode()
    assert (fit.status, fit.requested_by, fit.scanner.is_site) == (
        "queued",
        administrator,
        True,
    )
    assert not SiteCalibration.objects.exists()
    assert LogEntry.objects.get_for_object(fit).filter(action=0).exists()
    status = reverse("review:calibration_fit_status", args=[fit.pk])
    assert client.get(status).json()["status"] == "queued"
    calibration_fit_run(fit_id=fit.pk)
    assert client.get(status).json() == {
        "id": fit.pk,
        "status": "succeeded",
        "finished": True,
        "attempts": 0,
        "error": "",
        "calibration": SiteCalibration.objects.get().pk,
    }
    page = client.get(reverse("review:calibration")).content.decode()
    calibration = SiteCalibration.objects.get()
    assert calibration.target_sensitivity == 0.85
    assert calibration.reads == MIN_READS_FOR_SITE_CALIBRATION + 10
    assert 'id="calibration-1"' in page and 'class="reliability"' in page
    assert 'data-measure="ece"' in page
    assert f'<tr id="fit-{fit.pk}" data-status="succeeded">' in page
    # Fitted as a correction of the installed model's own calibration.
    own = model_calibration(model_version=calibration.model_version)
    prior = calibration.parameters["fitted_on"]["prior"]
    assert prior["calibration"] == own.calibration_id
    # How strong, the site's reads chose (by patient), and the page says so.
    assert prior["strength"] in PRIOR_STRENGTHS
    assert prior["chosen_by"] == "chosen by 5-fold cross-validation by patient"
    assert (
        f"correction of the model's own calibration (<code>{own.calibration_id}" in page
    )
    assert "chosen by 5-fold cross-validation by patient" in page

    response = client.post(
        reverse("review:calibration_activate", args=[calibration.pk]), follow=True
    )
    assert "Calibration 1 is active" in response.content.decode()
    activation = CalibrationActivation.objects.get()
    assert (activation.calibration, activation.activated_by) == (
        calibration,
        administrator,
    )
    assert activation.rescored == MIN_READS_FOR_SITE_CALIBRATION + 10
    assert LogEntry.objects.get_for_object(activation).exists()

    response = client.post(reverse("review:calibration_rollback"), follow=True)
    assert (
        "Rolled back to the model&#x27;s own calibration" in response.content.decode()
    )
    assert CalibrationActivation.objects.latest("activated_at").calibration is None


def test_out_of_range_target_is_refused_with_a_reason(client, administrator):
    client.force_login(administrator)
    response = client.post(reverse("review:calibration"), {"target_sensitivity": "1.5"})
    assert response.status_code == 200
    assert "less than or equal to 0.99" in response.content.decode()


def test_the_biopsy_outcome_form_is_for_radiologists_and_audited(
    client, radiologist, administrator, study
):
    url = reverse("review:study_pathology", args=[study.pk])
    client.force_login(administrator)
    assert client.post(url, {"outcome": "malignant"}).status_code == 403
    client.force_login(radiologist)
    response = client.post(
        url, {"outcome": "malignant", "biopsy_date": "2026-11-30"}, follow=True
    )
    page = response.content.decode()
    assert "Biopsy outcome recorded." in page
    assert '<strong id="pathology-outcome">malignant (biopsy)</strong>' in page
    study.refresh_from_db()
    assert study.pathology_entered_by == radiologist
    assert str(study.pathology_date) == "2026-11-30"
    assert (
        LogEntry.objects.get_for_object(study)
        .filter(changes__icontains="pathology")
        .exists()
    )
    bad = client.post(url, {"outcome": "cancer"}, follow=True)
    assert "The biopsy outcome was not recorded" in bad.content.decode()


def test_the_agreement_monitor_shows_the_case_mix(client, administrator, user):
    signed_analyses(user, n=40, signed=False)
    client.force_login(administrator)
    page = client.get(reverse("review:agreement")).content.decode()
    assert 'id="case-mix"' in page
    assert "EM prior adjustment" in page
    assert '<tr data-label="malignant">' in page


def test_the_review_page_and_report_show_the_operating_point(
    client, radiologist, administrator, study, user, make_analysed_scan
):
    from portal.analyses.models import Analysis
    from portal.review.calibration import site_calibration_activate

    from .pdftext import pdf_text

    scan = make_analysed_scan(study, user, logits=[0.1, 0.2, 0.9])
    client.force_login(radiologist)
    review = reverse("review:scan_review", args=[scan.pk])
    page = client.get(review).content.decode()
    assert "The training sites' operating point" in page
    site_calibration_activate(
        calibration=_calibration(administrator), user=administrator
    )
    analysis = Analysis.objects.get(scan=scan)
    assert analysis.suspicious is True and analysis.operating_threshold == 0.3
    page = client.get(review).content.decode()
    assert (
        '<span class="badge suspicious" id="suspicious-flag">suspicious</span>' in page
    )
    assert "against this site's threshold 30.0% (site calibration 1" in page
    report = pdf_text(
        client.get(reverse("review:study_report", args=[study.pk])).content
    )
    assert "suspicious (p(malignant)" in report and "threshold 30.0%" in report

"""Site calibration per scanner model (DICOM Manufacturer / Model Name) with the site-wide
one as fallback, and "unusual for this model" judged against the site's own scans: what
a fit may be fitted on, what activation and rollback re-score (that scanner's history
only), which calibration a new result is shown with, and which rule judged its caution."""

from __future__ import annotations

import numpy as np
import pytest
from auditlog.models import LogEntry
from django.core.exceptions import ValidationError
from django.urls import reverse

from ml.site_calibration import MIN_READS_FOR_SITE_CALIBRATION, site_ood_threshold
from ml.site_calibration import SiteCalibration as Fitted
from portal.analyses.models import Analysis
from portal.clinical.models import Scan
from portal.clinical.scanners import SITE, Scanner
from portal.registry.models import CalibrationActivation
from portal.registry.selectors import site_calibration_active, site_calibration_in_use
from portal.review import calibration as site_calibration
from portal.review.models import CalibrationFit
from tests.conftest import TEST_MODEL_VERSION
from tests.portal.review.conftest import signed_analyses

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("calibration_model")]

ACME = Scanner("Acme Medical", "Sono 7")
OTHER = Scanner("Other Corp", "US-1")
MODEL_OOD_THRESHOLD = 5.0
N = MIN_READS_FOR_SITE_CALIBRATION + 10


@pytest.fixture
def calibration_model_fields() -> dict:
    return {"ood_threshold": MODEL_OOD_THRESHOLD}


def _from(scanner: Scanner, analyses: list[Analysis]) -> list[Analysis]:
    Scan.objects.filter(pk__in=[a.scan_id for a in analyses]).update(
        scanner_manufacturer=scanner.manufacturer, scanner_model=scanner.model
    )
    return analyses


def _scores(analyses: list[Analysis], scores: np.ndarray) -> None:
    """Distance scores as a worker stores them: the model's verdict and threshold."""
    for analysis, score in zip(analyses, scores, strict=True):
        Analysis.objects.filter(pk=analysis.pk).update(
            ood_score=float(score),
            ood_threshold=MODEL_OOD_THRESHOLD,
            in_distribution=bool(score <= MODEL_OOD_THRESHOLD),
            ood_rule="model",
        )


@pytest.fixture
def acme(user) -> list[Analysis]:
    """N signed reads from the Acme scanner, whose scans sit above the model's
    distance threshold (7-9: an unseen scanner), and a few unsigned ones far beyond."""
    analyses = _from(ACME, signed_analyses(user, n=N, signed=True, seed=11))
    _scores(analyses, np.linspace(7.0, 9.0, N))
    return analyses


@pytest.fixture
def other(user) -> list[Analysis]:
    """30 signed reads from another scanner (too few for its own calibration)."""
    return _from(OTHER, signed_analyses(user, n=30, signed=True, seed=12))


def _fit(administrator, scanner: Scanner = SITE):
    return site_calibration.site_calibration_fit(
        model_version=TEST_MODEL_VERSION,
        target_sensitivity=0.9,
        created_by=administrator,
        scanner=scanner,
    )


def test_the_reads_are_counted_per_scanner_model(acme, other, user):
    signed_analyses(
        user, n=8, signed=True, seed=13
    )  # PNG scans: the site's, no scanner
    counts = site_calibration.signed_reads_by_scanner(model_version=TEST_MODEL_VERSION)
    assert [(c.scanner, c.reads) for c in counts] == [
        (SITE, N + 30 + 8),
        (ACME, N),
        (OTHER, 30),
    ]
    assert [c.enough for c in counts] == [True, True, False]


def test_a_scanner_with_too_few_reads_is_refused_clearly(other, administrator):
    message = (
        f"A calibration for Other Corp US-1 needs at least "
        f"{MIN_READS_FOR_SITE_CALIBRATION} signed reads of this model's analyses of "
        "its scans; there are 30."
    )
    with pytest.raises(ValidationError, match=message):
        _fit(administrator, OTHER)
    with pytest.raises(ValidationError, match=message):
        site_calibration.calibration_fit_request(
            model_version=TEST_MODEL_VERSION,
            target_sensitivity=0.9,
            requested_by=administrator,
            scanner=OTHER,
        )
    assert not CalibrationFit.objects.exists()


def test_a_scanner_calibration_is_fitted_on_its_reads_only(acme, other, administrator):
    calibration = _fit(administrator, ACME)
    assert (calibration.scanner, calibration.reads, calibration.version) == (
        ACME,
        N,
        1,
    )
    assert calibration.evaluation["n"] == N
    # A later site-wide fit is the model version's next version, on every read.
    site = _fit(administrator)
    assert (site.scanner, site.reads, site.version) == (SITE, N + 30, 2)


def test_activating_a_scanner_calibration_rescores_that_scanners_history_only(
    acme, other, administrator
):
    calibration = _fit(administrator, ACME)
    before_other = {a.pk: a.probabilities for a in other}

    activation = site_calibration.site_calibration_activate(
        calibration=calibration, user=administrator
    )

    assert activation.scanner == ACME and activation.rescored == N
    assert LogEntry.objects.get_for_object(activation).exists()
    applied = Fitted.from_dict(calibration.parameters)
    first = Analysis.objects.get(pk=acme[0].pk)
    expected = applied.probabilities(np.asarray([acme[0].logits]))[0]
    assert first.calibration == calibration
    assert first.probabilities["malignant"] == pytest.approx(expected[2])
    assert LogEntry.objects.get_for_object(first).filter(action=1).exists()
    for analysis in Analysis.objects.filter(pk__in=before_other):
        assert analysis.calibration is None
        assert analysis.probabilities == before_other[analysis.pk]
    # The site-wide scope is untouched: the other scanner still has the model's own.
    assert site_calibration_active(model_version=TEST_MODEL_VERSION) is None
    assert (
        site_calibration_in_use(model_version=TEST_MODEL_VERSION, scanner=ACME)
        == calibration
    )
    assert (
        site_calibration_in_use(model_version=TEST_MODEL_VERSION, scanner=OTHER) is None
    )


def test_a_site_wide_activation_leaves_a_scanner_with_its_own_alone(
    acme, other, administrator
):
    scanner_calibration = _fit(administrator, ACME)
    site_calibration.site_calibration_activate(
        calibration=scanner_calibration, user=administrator
    )
    site = _fit(administrator)

    activation = site_calibration.site_calibration_activate(
        calibration=site, user=administrator
    )

    assert activation.scanner == SITE and activation.rescored == 30
    shown = dict(
        Analysis.objects.filter(pk__in=[a.pk for a in acme + other]).values_list(
            "pk", "calibration"
        )
    )
    assert {shown[a.pk] for a in acme} == {scanner_calibration.pk}
    assert {shown[a.pk] for a in other} == {site.pk}


def test_a_new_result_is_shown_with_its_scanners_calibration_else_the_sites(
    acme, administrator, study, user, make_png
):
    from portal.analyses.services import scan_submit
    from portal.clinical.uploads import validate_content
    from tests.portal.ingest.factories import GREY, dicom
    from tests.results import record_result

    scanner_calibration = _fit(administrator, ACME)
    site = _fit(administrator)
    for calibration in (scanner_calibration, site):
        site_calibration.site_calibration_activate(
            calibration=calibration, user=administrator
        )
    uploads = {
        "acme": validate_content(
            filename="a.dcm",
            content=dicom(GREY, manufacturer="Acme Medical", model_name="Sono 7"),
        ),
        "other": validate_content(
            filename="b.dcm",
            content=dicom(GREY.T.copy(), manufacturer="Other Corp", model_name="X"),
        ),
        "png": validate_content(filename="c.png", content=make_png()),
    }
    shown = {}
    for name, upload in uploads.items():
        scan = scan_submit(
            study=study,
            upload=upload,
            uploaded_by=user,
            model_version=TEST_MODEL_VERSION,
        )
        analysis = scan.analyses.get()
        record_result(analysis, logits=[0.1, 0.4, 0.9])
        analysis.refresh_from_db()
        shown[name] = analysis.calibration
    assert shown == {"acme": scanner_calibration, "other": site, "png": site}


def test_rollback_of_a_scanner_returns_its_scans_to_the_sites_calibration(
    acme, other, administrator
):
    site = _fit(administrator)
    site_calibration.site_calibration_activate(calibration=site, user=administrator)
    scanner_calibration = _fit(administrator, ACME)
    site_calibration.site_calibration_activate(
        calibration=scanner_calibration, user=administrator
    )

    activation = site_calibration.site_calibration_rollback(
        model_version=TEST_MODEL_VERSION, user=administrator, scanner=ACME
    )

    assert (activation.scanner, activation.calibration) == (ACME, None)
    assert activation.rescored == N
    assert set(
        Analysis.objects.filter(pk__in=[a.pk for a in acme]).values_list(
            "calibration", flat=True
        )
    ) == {site.pk}
    # The site-wide history has one activation: the scanner's rollback is its own.
    assert (
        CalibrationActivation.objects.filter(
            scanner_manufacturer="", scanner_model=""
        ).count()
        == 1
    )


def test_unusual_is_judged_against_the_sites_own_scans_once_it_has_enough(
    acme, administrator, settings, user
):
    settings.SITE_OOD_MIN_READS = 100
    settings.SITE_OOD_PERCENTILE = 99.0
    # Two unsigned scans of the site: one like its others, one far beyond them.
    extra = _from(ACME, signed_analyses(user, n=2, signed=False, seed=14))
    _scores(extra, np.asarray([8.0, 30.0]))
    site_threshold = site_ood_threshold(np.linspace(7.0, 9.0, N), percentile=99.0)

    calibration = _fit(administrator, ACME)

    assert calibration.ood_site_threshold == pytest.approx(site_threshold)
    unusual = calibration.evaluation["unusual"]
    assert (unusual["reference_reads"], unusual["scans"]) == (N, N + 2)
    # Every Acme scan is above the model's threshold: a caution on all of them...
    assert unusual["before"] == 1.0
    # ...and with the site's own percentile, on those above it: the top 1% of the signed
    # scans and the one far beyond.
    above = int((np.linspace(7.0, 9.0, N) > site_threshold).sum()) + 1
    assert unusual["after"] == pytest.approx(above / (N + 2))

    site_calibration.site_calibration_activate(
        calibration=calibration, user=administrator
    )
    far, usual = (Analysis.objects.get(pk=a.pk) for a in (extra[1], extra[0]))
    assert (far.in_distribution, far.ood_rule) == (False, "site")
    assert far.ood_site_threshold == pytest.approx(site_threshold)
    assert (usual.in_distribution, usual.ood_rule) == (True, "site")
    assert usual.outside_training_distribution is False

    site_calibration.site_calibration_rollback(
        model_version=TEST_MODEL_VERSION, user=administrator, scanner=ACME
    )
    usual.refresh_from_db()
    assert (usual.in_distribution, usual.ood_rule, usual.ood_site_threshold) == (
        False,
        "model",
        None,
    )


def test_too_few_signed_scans_with_a_score_keep_the_models_threshold_alone(
    acme, administrator, settings
):
    settings.SITE_OOD_MIN_READS = N + 1
    calibration = _fit(administrator, ACME)
    assert calibration.ood_site_threshold is None
    unusual = calibration.evaluation["unusual"]
    assert unusual["site_threshold"] is None
    assert unusual["before"] == unusual["after"] == 1.0
    site_calibration.site_calibration_activate(
        calibration=calibration, user=administrator
    )
    analysis = Analysis.objects.get(pk=acme[0].pk)
    assert (analysis.in_distribution, analysis.ood_rule) == (False, "model")


def test_the_page_fits_for_a_scanner_model_chosen_from_the_list(
    client, acme, other, administrator
):
    client.force_login(administrator)
    page = client.get(reverse("review:calibration")).content.decode()
    assert f"Acme Medical Sono 7: {N} signed reads" in page
    assert "Other Corp US-1: 30 signed reads" in page

    refused = client.post(
        reverse("review:calibration"),
        {"target_sensitivity": "0.9", "scanner": OTHER.key},
        follow=True,
    )
    assert "A calibration for Other Corp US-1 needs at least" in (
        refused.content.decode()
    )
    unknown = client.post(
        reverse("review:calibration"),
        {"target_sensitivity": "0.9", "scanner": Scanner("No", "Such").key},
    )
    assert "Select a valid choice" in unknown.content.decode()
    assert not CalibrationFit.objects.exists()

    client.post(
        reverse("review:calibration"),
        {"target_sensitivity": "0.9", "scanner": ACME.key},
    )
    fit = CalibrationFit.objects.get()
    assert fit.scanner == ACME
    site_calibration.calibration_fit_run(fit_id=fit.pk)
    fit.refresh_from_db()
    assert fit.calibration.scanner == ACME

    page = client.get(
        reverse("review:calibration"), {"scanner": ACME.key}
    ).content.decode()
    assert "Calibration 1 for Acme Medical Sono 7" in page
    assert 'class="unusual-shares"' in page
    response = client.post(
        reverse("review:calibration_activate", args=[fit.calibration.pk]), follow=True
    )
    assert "Calibration 1 is active for Acme Medical Sono 7" in (
        response.content.decode()
    )
    response = client.post(
        reverse("review:calibration_rollback"),
        {"scanner": ACME.key},
        follow=True,
    )
    assert "Rolled back to the site&#x27;s calibration" in response.content.decode()


def test_the_agreement_monitor_counts_the_cautions_by_rule(
    client, acme, administrator, settings
):
    settings.SITE_OOD_MIN_READS = 100
    client.force_login(administrator)
    page = client.get(reverse("review:agreement")).content.decode()
    # Before: the model's threshold judged every Acme scan, all unusual.
    assert (
        f'<tr data-rule="model"><th>the model&#x27;s threshold</th>'
        f'<td class="num">{N}</td><td class="num">{N}</td>' in page
    )
    calibration = _fit(administrator, ACME)
    site_calibration.site_calibration_activate(
        calibration=calibration, user=administrator
    )
    unusual = Analysis.objects.filter(
        pk__in=[a.pk for a in acme], in_distribution=False
    ).count()
    assert 0 < unusual < N
    page = client.get(reverse("review:agreement")).content.decode()
    assert (
        '<tr data-rule="site"><th>the model&#x27;s threshold and the site&#x27;s own '
        f'scans</th><td class="num">{N}</td><td class="num">{unusual}</td>' in page
    )

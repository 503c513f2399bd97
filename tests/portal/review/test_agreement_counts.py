"""AgreementCount: the agreement monitor's cells, kept by the review services as readings
are signed and amended, always equal to what the reviews themselves say."""

from __future__ import annotations

import datetime
import importlib

import pytest
from django.apps import apps
from django.utils import timezone

from portal.review import services
from portal.review.models import AgreementCount
from portal.review.selectors import agreement, agreement_cells
from portal.review.services import (
    agreement_counts_rebuild,
    review_save,
    review_sign,
)

MALIGNANT = {"normal": 0.1, "benign": 0.2, "malignant": 0.7}
BENIGN = {"normal": 0.1, "benign": 0.8, "malignant": 0.1}


def _kept() -> dict[tuple, int]:
    """The cells as the services kept them, empty cells left out."""
    return {
        (c.model_version, c.month, c.model_label, c.reader_label): c.readings
        for c in AgreementCount.objects.all()
        if c.readings
    }


def _from_reviews() -> dict[tuple, int]:
    return {
        (c["model_version"], c["month"], c["model_label"], c["reader_label"]): c[
            "readings"
        ]
        for c in agreement_cells()
    }


def _read(analysis, radiologist, label=None, *, sign=True):
    return review_save(
        analysis=analysis,
        author=radiologist,
        # Reading the model's own label is agreeing: a correction must differ from it.
        agrees_with_model=label in (None, analysis.label),
        label=label or "",
        birads="3",
        sign=sign,
    )


def _at(monkeypatch, when: datetime.datetime) -> None:
    monkeypatch.setattr(services.timezone, "now", lambda: when)


@pytest.mark.parametrize(
    ("readings", "cell"),
    [((None,), "malignant"), ((None, "normal"), "normal")],
    ids=["a signed reading counts once", "an amendment replaces the reading it amends"],
)
def test_the_latest_signed_reading_counts_once_in_its_cell(
    study, user, radiologist, make_analysed_scan, readings, cell
):
    scan = make_analysed_scan(study, user, probabilities=MALIGNANT)
    for label in readings:
        _read(scan.analyses.get(), radiologist, label)
    month = timezone.localdate().replace(day=1)
    assert _kept() == {("test-model-1", month, "malignant", cell): 1}
    assert _kept() == _from_reviews()


@pytest.mark.parametrize(
    "signed_before", [0, 1], ids=["a first reading", "an amendment of a signed one"]
)
def test_a_draft_counts_nowhere_until_signed(
    study, user, radiologist, make_analysed_scan, signed_before
):
    scan = make_analysed_scan(study, user, probabilities=MALIGNANT)
    for _ in range(signed_before):
        _read(scan.analyses.get(), radiologist)
    draft = _read(scan.analyses.get(), radiologist, "benign", sign=False)
    assert sum(_kept().values()) == signed_before
    assert _kept() == _from_reviews()
    review_sign(review=draft, user=radiologist)
    assert sum(_kept().values()) == 1
    assert _kept() == _from_reviews()


def test_an_amendment_of_another_models_result_moves_the_reading_across_versions(
    study, user, radiologist, make_analysed_scan
):
    from portal.analyses.models import Analysis

    scan = make_analysed_scan(study, user, probabilities=MALIGNANT)
    first = scan.analyses.get()
    second = Analysis.objects.create(
        scan=scan,
        model_version="v2",
        status=Analysis.Status.SUCCEEDED,
        label="benign",
        confidence=0.8,
        probabilities=BENIGN,
    )
    _read(first, radiologist)
    _read(second, radiologist)
    assert {key[0] for key in _kept()} == {"v2"}
    assert _kept() == _from_reviews()
    stats = agreement()
    assert [v["model_version"] for v in stats.per_version] == ["v2"]
    assert (stats.total, stats.agreed) == (1, 1)


def test_a_month_whose_readings_were_all_amended_later_is_not_shown(
    study, user, radiologist, make_analysed_scan, monkeypatch
):
    scan = make_analysed_scan(study, user, probabilities=MALIGNANT)
    other = make_analysed_scan(study, user, probabilities=BENIGN)
    _at(monkeypatch, timezone.make_aware(datetime.datetime(2026, 1, 15, 10)))
    _read(scan.analyses.get(), radiologist)
    _read(other.analyses.get(), radiologist)
    _at(monkeypatch, timezone.make_aware(datetime.datetime(2026, 3, 2, 9)))
    _read(scan.analyses.get(), radiologist, "benign")
    _read(other.analyses.get(), radiologist, "normal")
    assert _kept() == _from_reviews()
    stats = agreement()
    assert [m["month"] for m in stats.per_month] == [datetime.date(2026, 3, 1)]
    assert stats.per_month[0]["total"] == 2 and stats.per_month[0]["agreed"] == 0


def test_the_monitor_reads_the_counts_not_the_reviews(
    study, user, radiologist, make_analysed_scan
):
    scan = make_analysed_scan(study, user, probabilities=MALIGNANT)
    _read(scan.analyses.get(), radiologist)
    AgreementCount.objects.update(readings=5)
    assert agreement().total == 5


def test_rebuild_repairs_counts_from_the_reviews(
    study, user, radiologist, make_analysed_scan
):
    for probabilities in (MALIGNANT, BENIGN, MALIGNANT):
        scan = make_analysed_scan(study, user, probabilities=probabilities)
        _read(scan.analyses.get(), radiologist, "benign")
    kept = _kept()
    AgreementCount.objects.update(readings=99)
    AgreementCount.objects.create(
        model_version="gone",
        month=datetime.date(2020, 1, 1),
        model_label="normal",
        reader_label="normal",
        readings=3,
    )
    assert agreement_counts_rebuild() == 2
    assert _kept() == kept == _from_reviews()


@pytest.mark.parametrize("rebuild", ["service", "migration"])
def test_existing_readings_are_counted_by_the_rebuild_and_the_migration(
    study, user, radiologist, make_analysed_scan, rebuild
):
    for label in (None, "normal", "benign"):
        scan = make_analysed_scan(study, user, probabilities=MALIGNANT)
        _read(scan.analyses.get(), radiologist, label)
    _read(scan.analyses.get(), radiologist, "malignant")  # an amendment
    kept = _kept()
    AgreementCount.objects.all().delete()
    if rebuild == "service":
        agreement_counts_rebuild()
    else:
        migration = importlib.import_module(
            "portal.review.migrations.0003_agreement_counts"
        )
        migration.fill_agreement_counts(apps, None)
    assert _kept() == kept
    assert sum(kept.values()) == 3

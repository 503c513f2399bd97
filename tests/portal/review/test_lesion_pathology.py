"""A biopsy outcome per lesion (issue 20 item 5, issue 16 item 2): entered on the study
page next to each lesion, audited like the study's, and the ground truth of the lesion's
images ahead of the study's outcome and the signed label, in the site calibration's reads
and in the training export alike (portal.review.selectors.with_ground_truth)."""

from __future__ import annotations

import csv
import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from auditlog.models import LogEntry
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from portal.clinical.models import Lesion, Study
from portal.clinical.services import (
    lesion_record_pathology,
    patient_create,
    study_create,
    study_record_pathology,
)
from portal.review import calibration as site_calibration
from portal.review.services import review_save, scan_lesion_new, scan_lesion_set
from portal.review.training_export import pseudonym
from tests.conftest import TEST_MODEL_VERSION

from .conftest import LABELS, analysed_scan
from .pdftext import pdf_text

pytestmark = pytest.mark.django_db

KEY = "site-secret-key-for-tests-0123456789"


@dataclass
class Site:
    """One study with three lesions and an image in none, and a study of another
    patient without any; every image signed "normal" by the reader."""

    study: Study
    lesion_a: Lesion  # two images
    lesion_b: Lesion  # one image
    lesion_c: Lesion  # one image, never given an outcome
    scans: dict[str, Any]  # by file name


def _sign_normal(scan: Any, reader: Any) -> None:
    review_save(
        analysis=scan.analyses.get(),
        author=reader,
        agrees_with_model=False,
        label="normal",
        birads="1",
        sign=True,
    )


@pytest.fixture
def site(study: Any, user: Any, radiologist: Any) -> Site:
    other = study_create(
        patient=patient_create(identifier="H-0077", name="Other Patient"),
        created_by=user,
    )
    names = ("a-1.png", "a-2.png", "b-1.png", "c-1.png", "loose.png")
    scans = {
        name: analysed_scan(study, user, filename=name, logits=[0.1, 0.2, 0.3 + i])
        for i, name in enumerate(names)
    }
    scans["other.png"] = analysed_scan(
        other, user, filename="other.png", logits=[1.0, 0.0, 0.0]
    )
    # Grouped before signing: a signed reading keeps its lesion.
    lesion_a = scan_lesion_new(scan=scans["a-1.png"], user=radiologist)
    scan_lesion_set(scan=scans["a-2.png"], lesion=lesion_a, user=radiologist)
    lesion_b = scan_lesion_new(scan=scans["b-1.png"], user=radiologist)
    lesion_c = scan_lesion_new(scan=scans["c-1.png"], user=radiologist)
    for scan in scans.values():
        _sign_normal(scan, radiologist)
    return Site(study, lesion_a, lesion_b, lesion_c, scans)


def _biopsies(site: Site, radiologist: Any) -> None:
    """Lesion A benign, lesion B malignant, the study malignant; lesion C none."""
    lesion_record_pathology(
        lesion=site.lesion_a, outcome="benign", entered_by=radiologist
    )
    lesion_record_pathology(
        lesion=site.lesion_b,
        outcome="malignant",
        entered_by=radiologist,
        biopsy_date=datetime.date(2026, 11, 30),
    )
    study_record_pathology(
        study=site.study, outcome="malignant", entered_by=radiologist
    )


def _read_classes(site: Site) -> tuple[dict[str, str], Any]:
    """The calibration's ground truth per image name, in one query."""
    with CaptureQueriesContext(connection) as captured:
        reads = site_calibration.signed_reads(model_version=TEST_MODEL_VERSION)
    assert len(captured.captured_queries) == 1  # whatever the number of reads
    names = sorted(site.scans, key=lambda name: site.scans[name].pk)  # scan_id order
    return {
        name: LABELS[label] for name, label in zip(names, reads.labels, strict=True)
    }, reads


# --- the service ---------------------------------------------------------------------


def test_a_reader_records_and_clears_a_lesions_outcome_and_each_change_is_audited(
    site: Site, radiologist: Any
) -> None:
    before = timezone.now()
    lesion = lesion_record_pathology(
        lesion=site.lesion_b,
        outcome="malignant",
        entered_by=radiologist,
        biopsy_date=datetime.date(2026, 11, 30),
    )
    stored = Lesion.objects.get(pk=site.lesion_b.pk)
    assert (stored.pathology, stored.pathology_date, stored.pathology_entered_by) == (
        "malignant",
        datetime.date(2026, 11, 30),
        radiologist,
    )
    assert stored.pathology_entered_at >= before and lesion.pathology == "malignant"
    recorded = LogEntry.objects.get_for_object(stored).latest("timestamp")
    assert recorded.action == LogEntry.Action.UPDATE
    assert recorded.changes_dict["pathology"] == ["", "malignant"]
    assert recorded.changes_dict["pathology_date"] == ["None", "2026-11-30"]
    # The study's outcome and the other lesions are untouched.
    assert Study.objects.get(pk=site.study.pk).pathology == ""
    assert Lesion.objects.get(pk=site.lesion_a.pk).pathology == ""

    lesion_record_pathology(lesion=site.lesion_b, outcome="", entered_by=radiologist)
    stored.refresh_from_db()
    assert (
        stored.pathology,
        stored.pathology_date,
        stored.pathology_entered_by,
        stored.pathology_entered_at,
    ) == ("", None, None, None)
    cleared = LogEntry.objects.get_for_object(stored).latest("timestamp")
    assert cleared.changes_dict["pathology"] == ["malignant", ""]
    assert (
        LogEntry.objects.get_for_object(stored)
        .filter(action=LogEntry.Action.UPDATE, changes__icontains="pathology")
        .count()
        == 2
    )


@pytest.mark.parametrize(
    ("outcome", "biopsy_date", "message"),
    [
        ("normal", None, "'normal' is not a pathology outcome"),
        ("cancer", None, "not a pathology outcome"),
        (
            "benign",
            datetime.date.today() + datetime.timedelta(days=2),
            "The biopsy date is in the future",
        ),
    ],
)
def test_an_outcome_that_is_no_biopsy_outcome_is_refused_with_a_reason(
    site: Site, radiologist: Any, outcome: str, biopsy_date: Any, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        lesion_record_pathology(
            lesion=site.lesion_a,
            outcome=outcome,
            entered_by=radiologist,
            biopsy_date=biopsy_date,
        )
    assert Lesion.objects.get(pk=site.lesion_a.pk).pathology == ""


def test_a_user_who_may_not_record_pathology_is_refused(
    site: Site, user: Any, administrator: Any
) -> None:
    for outsider in (user, administrator):  # staff and administrators read only
        with pytest.raises(PermissionDenied):
            lesion_record_pathology(
                lesion=site.lesion_a, outcome="benign", entered_by=outsider
            )
        with pytest.raises(PermissionDenied):
            study_record_pathology(
                study=site.study, outcome="benign", entered_by=outsider
            )
    assert Lesion.objects.get(pk=site.lesion_a.pk).pathology == ""
    assert not LogEntry.objects.get_for_object(site.lesion_a).filter(
        action=LogEntry.Action.UPDATE
    )


# --- one rule: lesion, then study, then reader ---------------------------------------


def test_the_calibration_reads_each_lesions_outcome_then_the_studys_then_the_readers(
    site: Site, radiologist: Any
) -> None:
    classes, reads = _read_classes(site)
    assert set(classes.values()) == {"normal"}
    assert (reads.from_pathology, reads.from_lesion_pathology) == (0, 0)

    _biopsies(site, radiologist)
    classes, reads = _read_classes(site)
    assert classes == {
        "a-1.png": "benign",  # lesion A's biopsy, over the study's malignant
        "a-2.png": "benign",
        "b-1.png": "malignant",  # lesion B's
        "c-1.png": "malignant",  # lesion C has none: the study's
        "loose.png": "malignant",  # in no lesion: the study's
        "other.png": "normal",  # no biopsy: the reader's signed label
    }
    assert (reads.n, reads.from_pathology, reads.from_lesion_pathology) == (6, 5, 3)

    study_record_pathology(study=site.study, outcome="", entered_by=radiologist)
    classes, reads = _read_classes(site)
    assert [classes[name] for name in ("a-1.png", "b-1.png", "c-1.png")] == [
        "benign",
        "malignant",
        "normal",
    ]
    assert (reads.from_pathology, reads.from_lesion_pathology) == (3, 3)

    lesion_record_pathology(lesion=site.lesion_a, outcome="", entered_by=radiologist)
    classes, _ = _read_classes(site)
    assert classes["a-1.png"] == classes["a-2.png"] == "normal"


@pytest.mark.usefixtures("calibration_model")
def test_the_calibration_page_counts_the_lesions_outcomes_among_the_biopsies(
    client: Any, site: Site, radiologist: Any, administrator: Any
) -> None:
    _biopsies(site, radiologist)
    client.force_login(administrator)
    page = client.get(reverse("review:calibration")).content.decode()
    assert '<span id="signed-reads">6</span>' in page
    assert (
        '(<span id="reads-from-pathology">5</span> with a biopsy outcome, '
        "3 of them their lesion's)"
    ) in page


def test_the_export_gives_each_lesions_images_its_own_class(
    site: Site, radiologist: Any, settings: Any, tmp_path: Path
) -> None:
    settings.TRAINING_EXPORT_KEY = KEY
    _biopsies(site, radiologist)
    out = tmp_path / "site"

    call_command("export_training_set", "--out", str(out))

    with (out / "MANIFEST.csv").open() as handle:
        rows = {row["path"]: row for row in csv.DictReader(handle)}
    exported = {
        name: rows[f"images/{pseudonym(KEY, 'scan', str(scan.uuid))}.png"]
        for name, scan in site.scans.items()
    }
    assert {
        name: (row["class"], row["label_origin"]) for name, row in exported.items()
    } == {
        "a-1.png": ("benign", "pathology"),
        "a-2.png": ("benign", "pathology"),
        "b-1.png": ("malignant", "pathology"),
        "c-1.png": ("malignant", "pathology"),
        "loose.png": ("malignant", "pathology"),
        "other.png": ("normal", "reader"),
    }
    # Read normal by the reader, who drew no outline: benign by biopsy, it trains the
    # classifier only.
    assert exported["a-1.png"]["segmentation"] == "none"
    readme = (out / "README.md").read_text()
    assert "- class: benign 2, malignant 3, normal 1" in readme
    assert (
        "- label_origin: pathology 5, reader 1 (of the pathology rows, 3 from the "
        "biopsy of the image's lesion, the rest from the study's)"
    ) in readme


# --- the study page, the PDF and the API ---------------------------------------------


def _lesion_line(page: str, label: str) -> str:
    """The lesion's line under the study's result on the study page."""
    line = page[page.index(f'data-lesion="{label}">Lesion {label}:') :]
    return line[: line.index("</li>")]


def test_the_study_page_records_a_lesions_outcome_for_radiologists_only(
    client: Any, site: Site, radiologist: Any, user: Any, administrator: Any
) -> None:
    url = reverse("review:lesion_pathology", args=[site.lesion_b.pk])
    study_url = reverse("clinical:study_detail", args=[site.study.pk])
    for outsider in (user, administrator):
        client.force_login(outsider)
        assert client.post(url, {"outcome": "malignant"}).status_code == 403
        page = client.get(study_url).content.decode()
        assert 'id="lesion-pathologies"' in page  # they see the lesions' outcomes
        assert "lesion-pathology-form" not in page  # but are offered no form
    assert Lesion.objects.get(pk=site.lesion_b.pk).pathology == ""

    client.force_login(radiologist)
    page = client.get(study_url).content.decode()
    assert page.count('class="inline lesion-pathology-form"') == 3  # A, B, C
    assert f'action="{url}"' in page
    response = client.post(
        url, {"outcome": "malignant", "biopsy_date": "2026-11-30"}, follow=True
    )
    assert response.redirect_chain[-1][0] == study_url
    page = response.content.decode()
    assert "Biopsy outcome of lesion B recorded." in page
    assert (
        '<strong class="lesion-pathology-outcome">malignant (biopsy)</strong>, '
        "biopsy of 2026-11-30"
    ) in page
    assert "entered by dr-reader" in page
    # The lesion's line under the study's result says it too, marked as a biopsy.
    line = _lesion_line(page, "B")
    assert '<strong class="lesion-biopsy">malignant (biopsy)</strong>' in line
    assert "of 2026-11-30" in line
    assert "lesion-biopsy" not in _lesion_line(page, "A")
    assert (
        LogEntry.objects.get_for_object(site.lesion_b)
        .filter(changes__icontains="pathology")
        .exists()
    )

    refused = client.post(url, {"outcome": "cancer"}, follow=True).content.decode()
    assert "The biopsy outcome of lesion B was not recorded" in refused
    future = (datetime.date.today() + datetime.timedelta(days=3)).isoformat()
    refused = client.post(
        url, {"outcome": "benign", "biopsy_date": future}, follow=True
    ).content.decode()
    assert "The biopsy date is in the future." in refused
    assert Lesion.objects.get(pk=site.lesion_b.pk).pathology == "malignant"

    cleared = client.post(url, {"outcome": ""}, follow=True).content.decode()
    assert "Biopsy outcome of lesion B cleared." in cleared
    assert Lesion.objects.get(pk=site.lesion_b.pk).pathology == ""


def test_the_pdf_and_the_api_give_each_lesions_biopsy_outcome(
    client: Any, site: Site, radiologist: Any, make_user: Any
) -> None:
    from knox.models import AuthToken
    from rest_framework.test import APIClient

    _biopsies(site, radiologist)
    client.force_login(radiologist)
    response = client.get(reverse("review:study_report", args=[site.study.pk]))
    text = " ".join(pdf_text(response.content).split())
    assert "Biopsy outcome malignant (biopsy)" in text  # the study's
    lesion_b = text[text.index("Lesion B") :]
    assert lesion_b.index("biopsy outcome: malignant (biopsy), 2026-11-30") < (
        lesion_b.index("Lesion C")
    )
    lesion_a = text[text.index("Lesion A") : text.index("Lesion B")]
    assert "biopsy outcome: benign (biopsy)" in lesion_a
    assert "biopsy" not in text[text.index("Lesion C") : text.index("Image 1:")]

    _, key = AuthToken.objects.create(make_user("staff", "api-staff"))
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    lesions = api.get(f"/api/v1/studies/{site.study.pk}/").json()["lesions"]
    assert {lesion["label"]: lesion["biopsy"] for lesion in lesions} == {
        "A": {"outcome": "benign", "date": None},
        "B": {"outcome": "malignant", "date": "2026-11-30"},
        "C": None,
    }

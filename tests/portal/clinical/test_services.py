from __future__ import annotations

import hashlib
from io import BytesIO

import pytest
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage

from portal.analyses.models import Analysis
from portal.analyses.services import scan_submit
from portal.clinical.services import patient_create, study_create
from portal.clinical.uploads import validate_content

pytestmark = pytest.mark.django_db


def _upload(name: str, content: bytes):
    return validate_content(filename=name, content=content)


def test_patient_identifier_is_unique():
    patient_create(identifier="H-1", name="A")
    with pytest.raises(ValidationError):
        patient_create(identifier="H-1", name="B")


def test_study_create_records_who_created_it(patient, user):
    study = study_create(patient=patient, created_by=user, description=" Left breast ")
    assert study.created_by == user
    assert study.description == "Left breast"


def test_scan_create_stores_the_file_under_a_name_without_patient_data(
    study, user, make_png, django_capture_on_commit_callbacks, enqueued
):
    content = make_png(80, 60)
    upload = _upload("Jane Example H-0001 left.png", content)
    with django_capture_on_commit_callbacks(execute=True):
        scan = scan_submit(
            study=study, upload=upload, uploaded_by=user, model_version="v1"
        )

    assert scan.original.name == f"scans/{study.pk}/{scan.uuid}.png"
    assert "Jane" not in scan.original.name and "H-0001" not in scan.original.name
    assert scan.original_filename == "Jane Example H-0001 left.png"
    assert (scan.width, scan.height, scan.format) == (80, 60, "PNG")
    assert scan.sha256 == hashlib.sha256(content).hexdigest()
    with default_storage.open(scan.original.name, "rb") as stored:
        assert stored.read() == content

    analysis = scan.analyses.get()
    assert (analysis.status, analysis.model_version) == (Analysis.Status.QUEUED, "v1")
    assert enqueued == [(analysis.pk, None)]


def test_nothing_is_enqueued_before_commit(study, user, make_png, enqueued):
    # Inside the test transaction nothing commits, so no message may be sent yet.
    scan_submit(
        study=study,
        upload=_upload("a.png", make_png()),
        uploaded_by=user,
        model_version="v1",
    )
    assert enqueued == []


def test_upload_of_a_bmp_keeps_its_format(study, user):
    from PIL import Image

    buffer = BytesIO()
    Image.new("RGB", (40, 36)).save(buffer, format="BMP")
    scan = scan_submit(
        study=study,
        upload=_upload("x.png", buffer.getvalue()),
        uploaded_by=user,
        model_version="v1",
    )
    assert scan.format == "BMP"
    assert scan.original.name.endswith(".bmp")


def test_scan_create_stores_the_scan_and_leaves_its_analysis_to_the_layer_above(
    study, user, make_png, enqueued
):
    from portal.clinical.services import scan_create

    scan = scan_create(
        study=study, upload=_upload("a.png", make_png()), uploaded_by=user
    )
    assert scan.pk is not None and scan.display.name
    assert not Analysis.objects.filter(scan=scan).exists()
    assert enqueued == []

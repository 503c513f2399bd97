"""Sending results to a PACS: DCMTK's storescp plays the PACS, on a loopback port."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from django.db import transaction
from pydicom.uid import generate_uid

from bench.launch import free_port, point_celery_at, stop_process
from portal.audit.models import AccessRecord
from portal.dicomnet import services
from portal.dicomnet.results import encode
from portal.dicomnet.sender import SendFailed
from tests.portal.dicomnet.conftest import (
    finish_analysis,
    read_seg,
    redis_or_skip,
    start_storescp,
    store_scan,
)
from tests.portal.ingest.factories import GREY, dicom, png

pytestmark = pytest.mark.slow

if shutil.which("storescp") is None:
    pytest.skip(
        "DCMTK is not installed (apt-get install dcmtk; .ci/run installs it)",
        allow_module_level=True,
    )

PACS_AE = "PACS_TEST"


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """DCMTK's storage SCP writing every received object into a folder."""
    folder = tmp_path / "pacs"
    folder.mkdir()
    port = free_port()
    process = start_storescp(folder, port, PACS_AE)
    yield {"port": port, "folder": folder}
    stop_process(process, 10)


def received(folder: Path, count: int) -> list[pydicom.Dataset]:
    deadline = time.monotonic() + 20
    while len(list(folder.iterdir())) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)  # the last file is complete once storescp has answered
    return [pydicom.dcmread(path) for path in sorted(folder.iterdir())]


@pytest.fixture
def destination(settings: Any, storescp: dict[str, Any]) -> dict[str, Any]:
    settings.DICOM_DESTINATION = {
        "ae_title": PACS_AE,
        "host": "127.0.0.1",
        "port": storescp["port"],
    }
    return storescp


def test_seg_sr_and_capture_reach_the_configured_pacs(
    destination: dict[str, Any], study: Any, user: Any
) -> None:
    scan = store_scan(study, user, dicom(GREY, study_uid=generate_uid()))
    analysis = finish_analysis(scan)
    sent = services.results_send(analysis_id=analysis.pk)

    stored = received(destination["folder"], 3)
    assert sorted(str(d.SOPInstanceUID) for d in stored) == sorted(sent)
    by_class = {d.SOPClassUID.name: d for d in stored}
    assert set(by_class) == {
        "Segmentation Storage",
        "Comprehensive SR Storage",
        "Secondary Capture Image Storage",
    }
    # What the PACS stored reads back as what was written.
    source = pydicom.dcmread(scan.original.open("rb"))
    seg = read_seg(encode(by_class["Segmentation Storage"]))
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.get_segment_description(1).segment_label == "Lesion"
    sr = by_class["Comprehensive SR Storage"]
    assert sr.PatientID == source.PatientID
    record = AccessRecord.objects.get(action=AccessRecord.Action.SEND)
    assert record.object_id == str(analysis.pk)
    assert record.path == f"dicom://{PACS_AE}@127.0.0.1:{destination['port']}"
    assert record.detail == "dicom seg+overlay+sr"


def test_a_png_scan_sends_its_source_capture_first(
    destination: dict[str, Any], study: Any, user: Any
) -> None:
    scan = store_scan(study, user, png(64, 48, value=77), name="x.png")
    sent = services.results_send(analysis_id=finish_analysis(scan).pk)
    stored = received(destination["folder"], 4)
    assert len(stored) == 4
    seg = next(d for d in stored if d.Modality == "SEG")
    source = next(d for d in stored if d.SOPInstanceUID == sent[0])
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID


def test_nothing_leaves_without_a_destination(
    settings: Any, storescp: dict[str, Any], study: Any, user: Any
) -> None:
    settings.DICOM_DESTINATION = None
    scan = store_scan(study, user, dicom(GREY, study_uid=generate_uid()))
    analysis = finish_analysis(scan)
    assert services.queue_results_send(analysis_id=analysis.pk) is False
    assert services.results_send(analysis_id=analysis.pk) == []
    time.sleep(0.5)
    assert list(storescp["folder"].iterdir()) == []
    assert not AccessRecord.objects.filter(action=AccessRecord.Action.SEND).exists()


def test_an_unreachable_pacs_is_a_failure_to_retry(
    settings: Any, study: Any, user: Any
) -> None:
    settings.DICOM_DESTINATION = {
        "ae_title": PACS_AE,
        "host": "127.0.0.1",
        "port": free_port(),  # nobody listens
    }
    analysis = finish_analysis(store_scan(study, user, dicom(GREY)))
    with pytest.raises(SendFailed, match="could not be opened"):
        services.results_send(analysis_id=analysis.pk)
    assert not AccessRecord.objects.filter(action=AccessRecord.Action.SEND).exists()


@pytest.mark.django_db(transaction=True)
def test_a_send_is_queued_on_commit_after_analysis_and_after_sign_off(
    settings: Any, study: Any, user: Any, make_user: Any
) -> None:
    from portal.review.services import review_save
    from workers import app

    client, url = redis_or_skip(14)
    queue = f"dicom-send-{uuid.uuid4().hex[:12]}"
    previous = app.conf.broker_url
    settings.CELERY_DICOM_QUEUE = queue
    settings.DICOM_DESTINATION = {"ae_title": PACS_AE, "host": "127.0.0.1", "port": 1}
    point_celery_at(url)
    try:
        analysis = finish_analysis(store_scan(study, user, dicom(GREY)))
        with transaction.atomic():
            assert services.queue_results_send(analysis_id=analysis.pk)
            assert client.llen(queue) == 0  # not before the commit
        assert client.llen(queue) == 1
        review = review_save(
            analysis=analysis,
            author=make_user("radiologist", "dr-sign"),
            sign=True,
            agrees_with_model=True,
            label="malignant",
            birads="5",
        )
        assert client.llen(queue) == 2
        settings.DICOM_SEND_AFTER_SIGNOFF = False
        review_save(
            analysis=analysis,
            author=review.author,
            sign=True,
            agrees_with_model=True,
            label="malignant",
            birads="4C",
        )
        assert client.llen(queue) == 2
    finally:
        point_celery_at(previous)
        client.delete(queue)
        client.close()

"""Sending results to a PACS that is down, with a real worker: the send fails, the worker
retries it with backoff, and a later attempt delivers once DCMTK's storescp (the PACS)
is up; when every attempt fails the task gives up. Each attempt is in the audit trail.

The retry delays come from the worker's environment (DICOM_SEND_RETRY_DELAY, 1 s
doubling to at most 4 s here), so the whole schedule takes seconds.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import redis

from bench.launch import free_port, stop_process, tail
from portal.analyses.models import Analysis
from portal.audit.models import AccessRecord
from tests.conftest import SCANS_DIR
from tests.e2e.conftest import PIXEL_LIMIT
from tests.portal.dicomnet.conftest import start_storescp

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

if shutil.which("storescp") is None:
    pytest.skip(
        "DCMTK is not installed (apt-get install dcmtk)", allow_module_level=True
    )

TIMEOUT_S = float(os.environ.get("E2E_TIMEOUT", "420"))
PACS_AE = "PACS_RETRY"
MAX_RETRIES = 4
MAX_DELAY_S = 4
SCAN = SCANS_DIR / "malignant/case205.png"
# What a PNG scan sends: its source capture, the SEG, the outline capture and the SR.
OBJECTS = 4


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The PACS's address and folder; storescp is started by the test, when it wants."""
    folder = tmp_path / "pacs"
    folder.mkdir()
    pacs: dict[str, Any] = {"port": free_port(), "folder": folder, "process": None}
    yield pacs
    if pacs["process"] is not None:
        stop_process(pacs["process"], 10)


@pytest.fixture
def dicom_queue(e2e_broker: str, settings: Any, pacs: dict[str, Any]) -> Iterator[str]:
    """A send queue of this test's own, and the same destination as the worker's."""
    queue = f"dicom-e2e-{uuid.uuid4().hex[:12]}"
    settings.CELERY_DICOM_QUEUE = queue
    settings.DICOM_DESTINATION = {
        "ae_title": PACS_AE,
        "host": "127.0.0.1",
        "port": pacs["port"],
    }
    yield queue
    client = redis.Redis.from_url(e2e_broker)
    client.delete(queue)
    client.close()


@pytest.fixture
def worker_env(pacs: dict[str, Any], dicom_queue: str) -> dict[str, str]:
    return {
        "DICOM_DESTINATION": f"{PACS_AE}@127.0.0.1:{pacs['port']}",
        "CELERY_DICOM_QUEUE": dicom_queue,
        "DICOM_SEND_MAX_RETRIES": str(MAX_RETRIES),
        "DICOM_SEND_RETRY_DELAY": "1",
        "DICOM_SEND_RETRY_MAX_DELAY": str(MAX_DELAY_S),
    }


@pytest.fixture
def send_worker(
    worker_for_test: Any, dicom_queue: str, settings: Any
) -> Iterator[tuple[Any, Path]]:
    """One worker that analyses and sends, as a small site runs it."""
    yield from worker_for_test([settings.CELERY_INFERENCE_QUEUE, dicom_queue])


@pytest.fixture
def analysed(
    send_worker: tuple[Any, Path],
    real_weights_dir: Path,
    study: Any,
    user: Any,
    settings: Any,
) -> Callable[[], Analysis]:
    """Uploads a scan and returns its analysis once the worker has finished it."""
    from portal.analyses.modelinfo import current_model_version
    from portal.analyses.services import scan_submit
    from portal.clinical.uploads import validate_content

    settings.UPLOAD_MAX_PIXELS = PIXEL_LIMIT

    def analyse() -> Analysis:
        scan = scan_submit(
            study=study,
            upload=validate_content(filename=SCAN.name, content=SCAN.read_bytes()),
            uploaded_by=user,
            model_version=current_model_version(real_weights_dir),
        )
        analysis = Analysis.objects.get(scan=scan)
        wait_until(
            lambda: (
                refreshed(analysis).status
                in {Analysis.Status.SUCCEEDED, Analysis.Status.FAILED}
            ),
            "the analysis to finish",
            send_worker,
        )
        assert analysis.status == Analysis.Status.SUCCEEDED, analysis.error
        return analysis

    return analyse


def refreshed(analysis: Analysis) -> Analysis:
    analysis.refresh_from_db()
    return analysis


def wait_until(
    condition: Callable[[], object], what: str, worker: tuple[Any, Path]
) -> None:
    process, log_path = worker
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        assert process.poll() is None, f"worker died:\n{tail(log_path)}"
        assert time.monotonic() < deadline, f"waited for {what}:\n{tail(log_path)}"
        time.sleep(0.2)


def send_records(analysis: Analysis) -> list[tuple[str, str]]:
    """(action, detail) of the analysis's send records, oldest first."""
    return list(
        AccessRecord.objects.filter(
            object_id=str(analysis.pk),
            action__in=[AccessRecord.Action.SEND, AccessRecord.Action.SEND_FAILED],
        )
        .order_by("at", "id")
        .values_list("action", "detail")
    )


def received(folder: Path, count: int, worker: tuple[Any, Path]) -> list[Any]:
    wait_until(lambda: len(list(folder.iterdir())) >= count, f"{count} objects", worker)
    time.sleep(0.5)  # the last file is complete once storescp has answered
    return [pydicom.dcmread(path) for path in sorted(folder.iterdir())]


def test_a_send_to_a_pacs_that_is_down_is_retried_until_it_is_up(
    analysed, send_worker, pacs
):
    analysis = analysed()
    # Nobody listens on the PACS's port: the worker's send fails, twice at least.
    wait_until(
        lambda: len(send_records(analysis)) >= 2, "two failed attempts", send_worker
    )
    assert send_records(analysis)[:2] == [
        (AccessRecord.Action.SEND_FAILED, "dicom attempt 1, retrying"),
        (AccessRecord.Action.SEND_FAILED, "dicom attempt 2, retrying"),
    ]
    assert list(pacs["folder"].iterdir()) == []

    pacs["process"] = start_storescp(pacs["folder"], pacs["port"], PACS_AE)
    stored = received(pacs["folder"], OBJECTS, send_worker)
    assert sorted(d.Modality for d in stored) == ["OT", "OT", "SEG", "SR"]
    assert {d.PatientID for d in stored} == {analysis.scan.study.patient.identifier}
    assert len({d.SOPInstanceUID for d in stored}) == OBJECTS

    records = send_records(analysis)
    *failures, success = records
    assert success == (AccessRecord.Action.SEND, "dicom source+seg+overlay+sr")
    assert failures == [
        (AccessRecord.Action.SEND_FAILED, f"dicom attempt {n}, retrying")
        for n in range(1, len(failures) + 1)
    ]
    assert 2 <= len(failures) <= MAX_RETRIES
    # Delivered once: no retry is left waiting to send the objects again.
    time.sleep(MAX_DELAY_S + 1)
    assert send_records(analysis) == records
    assert len(list(pacs["folder"].iterdir())) == OBJECTS
    assert refreshed(analysis).status == Analysis.Status.SUCCEEDED


def test_a_send_that_never_gets_through_is_recorded_as_given_up(
    analysed, send_worker, pacs, make_user
):
    from portal.review.services import review_save

    analysis = analysed()
    attempts = MAX_RETRIES + 1
    wait_until(
        lambda: len(send_records(analysis)) >= attempts, "the last attempt", send_worker
    )
    assert send_records(analysis) == [
        (AccessRecord.Action.SEND_FAILED, f"dicom attempt {n}, retrying")
        for n in range(1, attempts)
    ] + [(AccessRecord.Action.SEND_FAILED, f"dicom attempt {attempts}, gave up")]
    process, log_path = send_worker
    assert f"giving up sending DICOM results after {attempts} attempts" in tail(
        log_path, 200
    )

    # Nothing else is hurt: the analysis stands, and the worker sends the next results
    # (the sign-off's) once the PACS is back.
    assert refreshed(analysis).status == Analysis.Status.SUCCEEDED
    pacs["process"] = start_storescp(pacs["folder"], pacs["port"], PACS_AE)
    review = review_save(
        analysis=analysis,
        author=make_user("radiologist", "dr-retry"),
        agrees_with_model=True,
        label=analysis.label,
        birads="4A",
        sign=True,
    )
    stored = received(pacs["folder"], OBJECTS, send_worker)
    report = next(d for d in stored if d.Modality == "SR")
    assert report.VerificationFlag == "VERIFIED"
    assert send_records(analysis)[-1] == (
        AccessRecord.Action.SEND,
        "dicom source+seg+overlay+sr",
    )
    assert review.signed_at is not None
    assert process.poll() is None

"""`manage.py dicom_listener` as deployed, with DCMTK's storescu and echoscu as the scanner.

The listener runs as its own process on this test's database, storage and a Redis
queue of its own, so "queued" means a message really is in the broker.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from django.db import connection
from pydicom.uid import generate_uid

from bench.launch import free_port, start_listener, stop_process
from portal.analyses.models import Analysis
from portal.clinical.models import Scan, Study
from portal.ingest.models import UploadBatch, UploadItem
from tests.portal.dicomnet.conftest import (
    SCANNER_AE,
    finished_batch,
    listener_env,
    redis_or_skip,
)
from tests.portal.ingest.factories import GREY, RGB, dicom

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

LISTENER_AE = "BUSAI"
REDIS_DB = 14

if shutil.which("storescu") is None:
    pytest.skip(
        "DCMTK is not installed (apt-get install dcmtk; .ci/run installs it)",
        allow_module_level=True,
    )


@pytest.fixture
def queue() -> Iterator[tuple[redis.Redis, str, str]]:
    client, url = redis_or_skip(REDIS_DB)
    name = f"inference-dicom-{uuid.uuid4().hex[:12]}"
    yield client, url, name
    client.delete(name)
    client.close()


@pytest.fixture
def listener(
    queue: tuple[redis.Redis, str, str],
    media_root: Path,
    weights_dir: Path,
    tmp_path: Path,
) -> Iterator[dict[str, Any]]:
    _, url, queue_name = queue
    port = free_port()
    env = listener_env(
        port=port,
        redis_url=url,
        queue=queue_name,
        media_root=media_root,
        weights_dir=weights_dir,
        ae_title=LISTENER_AE,
        allowed=f"{SCANNER_AE},PACS_MAIN",
    )
    log_path = tmp_path / "listener.log"
    process = start_listener(env, log_path)
    try:
        yield {"port": port, "log": log_path, "process": process}
    finally:
        stop_process(process)
        connection.close()


def storescu(port: int, files: list[Path], *, calling: str = SCANNER_AE) -> Any:
    return subprocess.run(
        # --required: only the contexts the files need; -xy: propose JPEG baseline for
        # the JPEG file (storescu would otherwise convert it, and cannot); --no-halt:
        # go on after a refused file (storescu's default is to stop sending).
        [
            "storescu",
            "-v",
            "--required",
            "-xy",
            "--no-halt",
            "-aet",
            calling,
            "-aec",
            LISTENER_AE,
            "127.0.0.1",
            str(port),
        ]
        + [str(f) for f in files],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_storescu_sends_jpeg_cine_and_a_file_without_pixels(
    listener: dict[str, Any], queue: tuple[redis.Redis, str, str], tmp_path: Path
) -> None:
    client, _, queue_name = queue
    study_uid = generate_uid()
    clip = np.stack([np.roll(RGB, shift, axis=0) for shift in range(8)])
    files = {
        "plain.dcm": dicom(GREY, study_uid=study_uid, accession="A-1"),
        "jpeg.dcm": dicom(
            RGB, photometric="RGB", transfer_syntax="jpeg", study_uid=study_uid
        ),
        "nopixels.dcm": dicom(None, study_uid=study_uid),
        "cine.dcm": dicom(clip, photometric="RGB", frames=8, study_uid=study_uid),
    }
    paths = []
    for name, content in files.items():
        path = tmp_path / name
        path.write_bytes(content)
        paths.append(path)

    result = storescu(listener["port"], paths)

    # storescu carries on after the refused file.
    log = result.stdout + result.stderr
    assert log.count("Received Store Response (Success)") == 3, log
    assert "Received Store Response (Error: CannotUnderstand)" in log, log
    batch = finished_batch()
    items = list(batch.items.order_by("pk"))
    accepted, rejected = UploadItem.Outcome.ACCEPTED, UploadItem.Outcome.REJECTED
    assert [i.outcome for i in items] == [accepted, accepted, rejected, accepted], log
    assert items[2].reason == "DICOM file has no pixel data (not an image object)"
    assert batch.calling_ae_title == SCANNER_AE
    study = Study.objects.get(study_instance_uid=study_uid)
    scans = Scan.objects.filter(study=study)
    assert scans.count() == 3
    jpeg_scan = Scan.objects.get(pk=items[1].scan_id)
    assert jpeg_scan.original.open("rb").read()[128:132] == b"DICM"
    # Queued in the database and sent to the broker, one message each.
    analyses = Analysis.objects.filter(scan__in=scans)
    assert analyses.count() == 3
    assert set(analyses.values_list("status", flat=True)) == {"queued"}
    assert client.llen(queue_name) == 3


def test_storescu_from_an_ae_title_not_allowed_is_rejected(
    listener: dict[str, Any], queue: tuple[redis.Redis, str, str], tmp_path: Path
) -> None:
    client, _, queue_name = queue
    path = tmp_path / "scan.dcm"
    path.write_bytes(dicom())
    result = storescu(listener["port"], [path], calling="INTRUDER")
    assert result.returncode != 0
    assert "Association Rejected" in result.stderr + result.stdout
    time.sleep(0.5)
    assert UploadBatch.objects.count() == 0
    assert Scan.objects.count() == 0
    assert client.llen(queue_name) == 0
    assert "refused a DICOM association from AE title 'INTRUDER'" in (
        listener["log"].read_text()
    )


def test_echoscu_is_answered(listener: dict[str, Any]) -> None:
    result = subprocess.run(
        ["echoscu", "-aet", "PACS_MAIN", "-aec", LISTENER_AE, "127.0.0.1"]
        + [str(listener["port"])],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_four_storescu_associations_sending_one_new_study_at_once_all_store(
    listener: dict[str, Any], queue: tuple[redis.Redis, str, str], tmp_path: Path
) -> None:
    """Issue 18 finding 7: four associations x 20 instances of the same new patient and
    study, at the same moment. On PostgreSQL each used to race to create the patient
    and the study; the losers' instances were refused (C000) and lost."""
    client, _, queue_name = queue
    study_uid = generate_uid()
    senders, per_sender = 4, 20
    folders = []
    for sender in range(senders):
        folder = tmp_path / f"sender{sender}"
        folder.mkdir()
        for number in range(per_sender):
            pixels = GREY.copy()
            pixels[0, :2] = (sender, number)  # a distinct image (sha256) each
            (folder / f"{number:02d}.dcm").write_bytes(
                dicom(
                    pixels,
                    study_uid=study_uid,
                    patient_id="RACE-1",
                    accession="RACE-ACC",
                    instance_number=sender * per_sender + number + 1,
                )
            )
        folders.append(sorted(folder.iterdir()))
    command = [
        "storescu",
        "-v",
        "--required",
        "--no-halt",
        "-aet",
        SCANNER_AE,
        "-aec",
        LISTENER_AE,
        "127.0.0.1",
        str(listener["port"]),
    ]
    processes = [
        subprocess.Popen(
            command + [str(f) for f in files],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for files in folders
    ]
    logs = [process.communicate(timeout=300)[0] for process in processes]

    for process, log in zip(processes, logs, strict=True):
        assert process.returncode == 0, log
        assert log.count("Received Store Response (Success)") == per_sender, log
    deadline = time.monotonic() + 30
    while UploadBatch.objects.filter(finished_at__isnull=False).count() < senders:
        assert time.monotonic() < deadline, "the associations' reports never closed"
        time.sleep(0.1)
    assert UploadItem.objects.filter(outcome=UploadItem.Outcome.ACCEPTED).count() == 80
    study = Study.objects.get(study_instance_uid=study_uid)
    assert study.patient.identifier == "RACE-1"
    assert Study.objects.count() == 1
    scans = Scan.objects.filter(study=study)
    assert scans.count() == senders * per_sender
    assert Analysis.objects.filter(scan__in=scans, status="queued").count() == 80
    assert client.llen(queue_name) == 80

"""The hospital loop with real processes: a scanner (DCMTK storescu) sends a BUSI image to
`manage.py dicom_listener`, a `celery -A workers worker` analyses it with the trained
model and sends SEG, SR and secondary capture to the PACS (DCMTK storescp)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid

import highdicom as hd
import numpy as np
import pydicom
import pytest
from django.conf import settings
from django.db import connection
from PIL import Image
from pydicom.sr.codedict import codes

from bench.launch import (
    database_url,
    free_port,
    start_listener,
    start_worker,
    stop_process,
    stop_worker,
    tail,
)
from portal.analyses.models import Analysis
from portal.audit.models import AccessRecord
from tests.e2e.conftest import PIXEL_LIMIT
from tests.portal.dicomnet.conftest import start_storescp
from tests.portal.ingest.factories import dicom

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

if shutil.which("storescu") is None:
    pytest.skip(
        "DCMTK is not installed (apt-get install dcmtk)", allow_module_level=True
    )

TIMEOUT_S = float(os.environ.get("E2E_TIMEOUT", "420"))


def _items(dataset: pydicom.Dataset) -> list[pydicom.Dataset]:
    found = []
    for item in dataset.get("ContentSequence", []):
        found.append(item)
        found.extend(_items(item))
    return found


def _walk(dataset: pydicom.Dataset) -> list[tuple[str, str]]:
    """(concept name, value) of every TEXT and CODE content item of an SR."""
    pairs = []
    for item in _items(dataset):
        name = item.ConceptNameCodeSequence[0].CodeMeaning
        if item.ValueType == "TEXT":
            pairs.append((name, item.TextValue))
        elif item.ValueType == "CODE":
            pairs.append((name, item.ConceptCodeSequence[0].CodeMeaning))
    return pairs


def test_scanner_to_portal_to_pacs(
    request, e2e_broker, media_root, real_weights_dir, busi_dir, tmp_path
):
    pacs_folder = tmp_path / "pacs"
    pacs_folder.mkdir()
    pacs_port, listener_port = free_port(), free_port()
    pacs = start_storescp(pacs_folder, pacs_port, "PACS_E2E")
    send_queue = f"dicom-e2e-{uuid.uuid4().hex[:12]}"
    common = {
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "DATABASE_URL": database_url(connection.settings_dict),
        "REDIS_URL": e2e_broker,
        "CELERY_INFERENCE_QUEUE": settings.CELERY_INFERENCE_QUEUE,
        "CELERY_DICOM_QUEUE": send_queue,
        "MEDIA_ROOT": str(media_root),
        "STORAGE_BACKEND": "local",
        "ML_WEIGHTS_DIR": str(real_weights_dir),
        "SECRET_KEY": settings.SECRET_KEY,
        "UPLOAD_MAX_PIXELS": str(PIXEL_LIMIT),
        "PYTHONUNBUFFERED": "1",
    }
    listener = start_listener(
        {
            **os.environ,
            **common,
            "DICOM_AE_TITLE": "BUSAI_E2E",
            "DICOM_PORT": str(listener_port),
            "DICOM_ALLOWED_CALLING_AE_TITLES": "US_ROOM1",
        },
        tmp_path / "listener.log",
    )
    worker_log = tmp_path / "worker.log"
    worker = start_worker(
        database=common["DATABASE_URL"],
        broker=e2e_broker,
        media_root=media_root,
        log_path=worker_log,
        extra_env={
            **common,
            "DICOM_DESTINATION": f"PACS_E2E@127.0.0.1:{pacs_port}",
            "DICOM_AE_TITLE": "BUSAI_E2E",
        },
        name="dicom-e2e",
        queues=None,  # a plain worker: every declared queue, the send queue too
    )
    try:
        grey = np.asarray(
            Image.open(busi_dir / "malignant/malignant (1).png").convert("L")
        )
        instance = tmp_path / "scan.dcm"
        instance.write_bytes(dicom(grey, patient_id="E2E-DICOM", spacing=(0.08, 0.08)))
        sent = subprocess.run(
            ["storescu", "-aet", "US_ROOM1", "-aec", "BUSAI_E2E", "127.0.0.1"]
            + [str(listener_port), str(instance)],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert sent.returncode == 0, sent.stderr

        deadline = time.monotonic() + TIMEOUT_S
        while len(list(pacs_folder.iterdir())) < 3:
            assert time.monotonic() < deadline, (
                f"the PACS got {len(list(pacs_folder.iterdir()))} objects:\n"
                f"{tail(worker_log)}"
            )
            assert worker.poll() is None, tail(worker_log)
            time.sleep(1)
        time.sleep(1)
        analysis = Analysis.objects.get(scan__study__patient__identifier="E2E-DICOM")
        assert analysis.status == Analysis.Status.SUCCEEDED
        stored = {
            d.Modality: d for d in map(pydicom.dcmread, sorted(pacs_folder.iterdir()))
        }
        assert set(stored) == {"SEG", "SR", "OT"}
        source = pydicom.dcmread(analysis.scan.original.open("rb"))
        for dataset in stored.values():
            assert dataset.StudyInstanceUID == source.StudyInstanceUID
            assert dataset.PatientID == "E2E-DICOM"
        # The SR carries the model's class and the area in mm² of the stored mask.
        report = hd.sr.srread(
            pacs_folder / next(p.name for p in pacs_folder.iterdir() if "SR" in p.name)
        )
        assert report.VerificationFlag == "UNVERIFIED"
        texts = set(_walk(report))
        assert ("Algorithm Version", analysis.model_version) in texts
        assert ("Finding", analysis.label.capitalize()) in texts
        area = next(
            item
            for item in _items(report)
            if item.ValueType == "NUM"
            and item.ConceptNameCodeSequence[0].CodeValue == codes.SCT.Area.value
        )
        expected = analysis.scan.area_mm2(analysis.lesion_area_fraction)
        assert float(area.MeasuredValueSequence[0].NumericValue) == pytest.approx(
            expected, rel=1e-3
        )
        assert AccessRecord.objects.filter(
            action=AccessRecord.Action.SEND, object_id=str(analysis.pk)
        ).exists()
    finally:
        stop_worker(worker)
        stop_process(listener)
        stop_process(pacs, 10)
        connection.close()

"""The REST API end to end with real processes: a live portal, Redis and a `celery -A
workers worker` subprocess analysing real scans (tests/fixtures/scans) uploaded as
files, a zip and a DICOM file, then results and artifacts read back through the API with a token."""

from __future__ import annotations

import io
import os
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from bench.launch import tail
from portal.analyses.models import ARTIFACT_KINDS
from tests.conftest import SCANS_DIR
from tests.e2e.conftest import PIXEL_LIMIT, api_study
from tests.portal.ingest.factories import dicom

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

TIMEOUT_S = float(os.environ.get("E2E_TIMEOUT", "420"))
PASSWORD = "e2e-password-123!"


@pytest.fixture
def token(live_server: Any, django_user_model: Any) -> str:
    from portal.accounts.roles import STAFF, assign_role

    assign_role(
        django_user_model.objects.create_user(username="ris", password=PASSWORD), STAFF
    )
    response = requests.post(
        f"{live_server.url}/api/v1/auth/token/",
        json={"username": "ris", "password": PASSWORD},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()["token"]


def _dicom_from(path: Path) -> bytes:
    grey = np.asarray(Image.open(path).convert("L"))
    return dicom(grey, patient_id="API-001", study_uid="1.2.826.0.1.3680043.2.1125.42")


def test_a_client_uploads_through_the_api_and_reads_the_results(
    live_server, token, real_worker, settings
):
    settings.UPLOAD_MAX_PIXELS = PIXEL_LIMIT
    process, log_path = real_worker
    api = requests.Session()
    api.headers["Authorization"] = f"Token {token}"
    base = f"{live_server.url}/api/v1"

    patient = {
        "identifier": "API-001",
        "name": "Api Patient",
        "birth_date": "1970-01-01",
    }
    study_id = api_study(api, base, patient, "ACC-API")

    benign = (SCANS_DIR / "benign/case056.png").read_bytes()
    malignant = (SCANS_DIR / "malignant/case176.jpg").read_bytes()
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("exam/left/malignant.jpg", malignant)
        zf.writestr("exam/left/benign-again.png", benign)  # the same image again
        zf.writestr("exam/notes.txt", b"clinical notes, not an image")
    files = [
        ("files", ("benign.png", benign, "image/png")),
        ("files", ("exam.zip", archive.getvalue(), "application/zip")),
        (
            "files",
            (
                "normal.dcm",
                _dicom_from(SCANS_DIR / "normal/case213.jpg"),
                "application/dicom",
            ),
        ),
    ]
    upload = api.post(f"{base}/studies/{study_id}/scans/", files=files, timeout=120)
    assert upload.status_code == 201, upload.text
    report = upload.json()
    accepted = {a["filename"]: a for a in report["accepted"]}
    assert set(accepted) == {"benign.png", "exam/left/malignant.jpg", "normal.dcm"}
    assert [d["filename"] for d in report["duplicates"]] == [
        "exam/left/benign-again.png"
    ]
    assert report["duplicates"][0]["scan"] == accepted["benign.png"]["scan"]
    assert [r["filename"] for r in report["rejected"]] == ["exam/notes.txt"]

    deadline = time.monotonic() + TIMEOUT_S
    while True:
        progress = api.get(report["progress_url"], timeout=30).json()
        states = {a["filename"]: a["status"] for a in progress["accepted"]}
        assert progress["failed"] == 0, f"{progress}\n{tail(log_path)}"
        if progress["finished"]:
            break
        assert process.poll() is None, f"worker died:\n{tail(log_path)}"
        assert time.monotonic() < deadline, (
            f"still {states} after {TIMEOUT_S}s\n{tail(log_path)}"
        )
        time.sleep(1)
    assert progress["analysed"] == 4  # three new scans and the duplicate's analysis

    detail = api.get(f"{base}/studies/{study_id}/", timeout=30).json()
    assert detail["study_instance_uid"] == "1.2.826.0.1.3680043.2.1125.42"
    scans = {s["filename"]: s for s in detail["scans"]}
    assert scans["normal.dcm"]["format"] == "DICOM"
    assert scans["normal.dcm"]["pixel_spacing_mm"] == [0.1, 0.12]
    for name, row in accepted.items():
        analysis = api.get(f"{base}/analyses/{row['analysis']}/", timeout=30).json()
        assert analysis["status"] == "succeeded", (name, analysis)
        assert scans[name]["latest_analysis"]["id"] == row["analysis"]
        assert analysis["label"] in {"normal", "benign", "malignant"}
        assert abs(sum(analysis["probabilities"].values()) - 1) < 1e-3
        assert analysis["confidence"] == pytest.approx(
            max(analysis["probabilities"].values())
        )
        for kind in ARTIFACT_KINDS:
            url = analysis[f"{kind}_url"]
            artifact = api.get(url, timeout=30)
            assert artifact.status_code == 200, (kind, artifact.text[:200])
            image = Image.open(io.BytesIO(artifact.content))
            image.load()
            assert image.format == "PNG"
        assert requests.get(url, timeout=30).status_code == 401
        retry = api.post(f"{base}/analyses/{row['analysis']}/retry/", timeout=30)
        assert retry.status_code == 409
    original = api.get(scans["benign.png"]["original_url"], timeout=30)
    assert original.status_code == 200 and original.content == benign

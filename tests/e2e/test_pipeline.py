"""The whole slice with real processes: a live portal, Redis and a `celery -A workers
worker` subprocess running the real ml package on real scans (tests/fixtures/scans)."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from bench.launch import signed_in_session, tail
from portal.analyses.models import ARTIFACT_KINDS
from tests.conftest import SCANS_DIR
from tests.e2e.conftest import PIXEL_LIMIT

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

# Model load (TensorFlow import, build, first trace) plus two analyses on a slow CPU.
TIMEOUT_S = float(os.environ.get("E2E_TIMEOUT", "420"))
PASSWORD = "e2e-long-password-123!"
# A grey PNG and a colour JPEG.
GOOD_IMAGES = ("benign/case014.jpg", "malignant/case050.png")


@pytest.fixture
def browser(live_server: Any, django_user_model: Any) -> requests.Session:
    from portal.accounts.roles import STAFF, assign_role

    assign_role(
        django_user_model.objects.create_user(
            username="sonographer", password=PASSWORD
        ),
        STAFF,
    )
    return signed_in_session(live_server.url, "sonographer", PASSWORD)


def _post(session: requests.Session, url: str, **kwargs: Any) -> requests.Response:
    headers = {"Referer": url, **kwargs.pop("headers", {})}
    data = {
        "csrfmiddlewaretoken": session.cookies["csrftoken"],
        **kwargs.pop("data", {}),
    }
    return session.post(url, data=data, headers=headers, timeout=60, **kwargs)


def test_uploaded_scans_are_analysed_by_a_real_worker(
    live_server, browser, real_worker, settings
):
    settings.UPLOAD_MAX_PIXELS = PIXEL_LIMIT
    process, log_path = real_worker
    base = live_server.url

    created = _post(
        browser,
        f"{base}/patients/",
        data={
            "identifier": "E2E-001",
            "name": "Test Patient",
            "birth_date": "1970-01-01",
        },
    )
    created.raise_for_status()
    patient_url = created.url
    study = _post(
        browser,
        patient_url,
        data={"accession_number": "ACC-E2E", "study_date": "2026-01-01"},
    )
    study.raise_for_status()
    study_url = study.url.rstrip("/")
    assert "/studies/" in study_url

    good = {Path(p).name: (SCANS_DIR / p).read_bytes() for p in GOOD_IMAGES}
    truncated = (SCANS_DIR / "benign/case009.png").read_bytes()
    buffer = io.BytesIO()
    Image.new("L", (1100, 1000), 90).save(buffer, format="PNG")
    bad = {
        "report.png": b"Findings: none. This is a text file with an image name.\n",
        "truncated.png": truncated[: len(truncated) // 3],
        "too-many-pixels.png": buffer.getvalue(),
    }
    files = [
        ("files", (name, content, "image/png"))
        for name, content in {**good, **bad}.items()
    ]
    response = _post(
        browser,
        f"{study_url}/upload/",
        files=files,
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert sorted(a["filename"] for a in body["accepted"]) == sorted(good)
    reasons = {r["filename"]: r["reason"] for r in body["rejected"]}
    assert set(reasons) == set(bad)
    assert "not a recognised image" in reasons["report.png"]
    assert (
        "truncated" in reasons["truncated.png"] or "corrupt" in reasons["truncated.png"]
    )
    assert "over the limit" in reasons["too-many-pixels.png"]

    deadline = time.monotonic() + TIMEOUT_S
    while True:
        status = browser.get(f"{study_url}/status.json", timeout=30).json()
        analyses = {s["filename"]: s["analysis"] for s in status["scans"]}
        states = {name: a["status"] for name, a in analyses.items()}
        failed = {
            name: a["error"] for name, a in analyses.items() if a["status"] == "failed"
        }
        assert not failed, f"analyses failed: {failed}\n{tail(log_path)}"
        if set(states.values()) == {"succeeded"}:
            break
        assert process.poll() is None, f"worker died:\n{tail(log_path)}"
        assert time.monotonic() < deadline, (
            f"still {states} after {TIMEOUT_S}s\n{tail(log_path)}"
        )
        time.sleep(1)

    assert set(analyses) == set(good)
    for filename, analysis in analyses.items():
        assert analysis["label"] in {"normal", "benign", "malignant"}
        assert abs(sum(analysis["probabilities"].values()) - 1) < 1e-3
        assert analysis["confidence"] == pytest.approx(
            max(analysis["probabilities"].values())
        )
        assert set(analysis["artifacts"]) == set(ARTIFACT_KINDS)
        original = Image.open(io.BytesIO(good[filename]))
        for kind, url in analysis["artifacts"].items():
            artifact = browser.get(f"{base}{url}", timeout=30)
            assert artifact.status_code == 200
            image = Image.open(io.BytesIO(artifact.content))
            image.load()
            assert image.format == "PNG"
            if kind in ("mask", "overlay", "gradcam", "seg_gradcam"):
                # The mask as stored; the pictures drawn on the full scan on demand.
                assert image.size == original.size
            else:
                assert image.mode == "L" and max(image.size) <= 64
        anonymous = requests.get(f"{base}{url}", timeout=30, allow_redirects=False)
        assert anonymous.status_code == 302

    page = browser.get(study_url + "/", timeout=30)
    assert page.status_code == 200
    for filename in good:
        assert filename in page.text

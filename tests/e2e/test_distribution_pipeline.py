"""A scan that is not breast ultrasound, end to end with real processes (a live portal,
Redis, a `celery -A workers worker` running the real model): it is analysed and flagged
as outside what the model was trained on, through the API and on the review page."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from django.conf import settings
from PIL import Image, ImageDraw

from bench.launch import tail
from tests.e2e.conftest import PIXEL_LIMIT, api_study

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

TIMEOUT_S = float(os.environ.get("E2E_TIMEOUT", "420"))
PASSWORD = "e2e-ood-password-123!"


@pytest.fixture
def ood_threshold() -> float:
    """The installed model's out-of-distribution threshold; skips before any worker
    starts when the weights cannot tell."""
    path = Path(settings.ML_WEIGHTS_DIR) / "model.json"
    if not path.exists():
        pytest.skip(f"no trained model at {path} (set ML_WEIGHTS_DIR)")
    threshold = json.loads(path.read_text()).get("ood_threshold")
    if threshold is None:
        pytest.skip("the committed weights carry no out-of-distribution statistics")
    return float(threshold)


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _text_document() -> bytes:
    """A rendered page of text, as a scanned letter would arrive."""
    page = Image.new("L", (600, 800), 255)
    draw = ImageDraw.Draw(page)
    for line in range(30):
        draw.text((40, 30 + line * 25), f"Line {line}: referral letter text. " * 2, 0)
    buffer = io.BytesIO()
    page.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_photo_and_a_document_are_flagged_outside_the_training_distribution(
    ood_threshold, live_server, django_user_model, real_worker, settings
):
    from skimage import data

    from portal.accounts.roles import RADIOLOGIST, STAFF, assign_role

    settings.UPLOAD_MAX_PIXELS = PIXEL_LIMIT
    process, log_path = real_worker
    for username, role in (("ris", STAFF), ("reader", RADIOLOGIST)):
        assign_role(
            django_user_model.objects.create_user(username=username, password=PASSWORD),
            role,
        )
    base = live_server.url
    api = requests.Session()
    token = api.post(
        f"{base}/api/v1/auth/token/",
        json={"username": "ris", "password": PASSWORD},
        timeout=30,
    ).json()["token"]
    api.headers["Authorization"] = f"Token {token}"
    patient = {"identifier": "OOD-001", "name": "Ood Patient"}
    study_id = api_study(api, f"{base}/api/v1", patient, "ACC-OOD")
    uploads = {
        "astronaut.png": _png(data.astronaut()),
        "letter.png": _text_document(),
    }
    response = api.post(
        f"{base}/api/v1/studies/{study_id}/scans/",
        files=[("files", (n, c, "image/png")) for n, c in uploads.items()],
        timeout=60,
    )
    assert response.status_code == 201, response.text
    analyses = {a["filename"]: a["analysis"] for a in response.json()["accepted"]}
    assert set(analyses) == set(uploads)

    results: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + TIMEOUT_S
    while len(results) < len(analyses):
        for name, analysis_id in analyses.items():
            body = api.get(f"{base}/api/v1/analyses/{analysis_id}/", timeout=30).json()
            assert body["status"] != "failed", f"{name}: {body['error']}"
            if body["status"] == "succeeded":
                results[name] = body
        assert process.poll() is None, f"worker died:\n{tail(log_path)}"
        assert time.monotonic() < deadline, f"not done after {TIMEOUT_S}s"
        time.sleep(1)

    for name, body in results.items():
        assert body["in_distribution"] is False, (name, body["ood_score"])
        assert body["ood_score"] > ood_threshold
        assert body["ood_threshold"] == pytest.approx(ood_threshold)
        assert body["explained_class"] == body["label"]

    reader = requests.Session()
    reader.get(f"{base}/accounts/login/", timeout=30)
    reader.post(
        f"{base}/accounts/login/",
        data={
            "username": "reader",
            "password": PASSWORD,
            "csrfmiddlewaretoken": reader.cookies["csrftoken"],
        },
        headers={"Referer": f"{base}/accounts/login/"},
        timeout=30,
    ).raise_for_status()
    scan_id = api.get(f"{base}/api/v1/analyses/{analyses['astronaut.png']}/").json()[
        "scan"
    ]
    page = reader.get(f"{base}/scans/{scan_id}/review/", timeout=30)
    assert page.status_code == 200
    assert "Outside what the model was trained on — result not reliable." in page.text

"""Scans that are not breast ultrasound beside real ones, end to end with real processes
(a live portal, Redis, a `celery -A workers worker` running the real model).

The real fixture scans pass the ultrasound gate and keep their raw logits. A photo and
a document are withheld (no label, probabilities or outline; the page says why) when the
installed weights carry a gate; weights without one flag them "unusual for this model"
(the caution), as the single out-of-distribution flag did before."""

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
from tests.conftest import SCANS_DIR
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


REAL_SCANS = ("benign/case009.png", "malignant/case050.png")


def test_real_scans_pass_the_gate_and_a_photo_and_a_document_do_not(
    ood_threshold, live_server, django_user_model, real_worker, settings
):
    from skimage import data

    from portal.accounts.roles import RADIOLOGIST, STAFF, assign_role
    from portal.analyses.models import Analysis

    has_gate = bool(
        json.loads((Path(settings.ML_WEIGHTS_DIR) / "model.json").read_text()).get(
            "gate"
        )
    )

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
        **{Path(name).name: (SCANS_DIR / name).read_bytes() for name in REAL_SCANS},
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

    not_ultrasound = ("astronaut.png", "letter.png")
    for name, body in results.items():
        # Every analysis keeps the raw network output a site calibration re-scores.
        logits = Analysis.objects.get(pk=analyses[name]).logits
        assert len(logits) == 3 and all(np.isfinite(logits)), name
        assert "logits" not in body
        if name not in not_ultrasound:
            assert body["withheld"] is False, (name, body["gate_score"])
            assert body["label"] in ("normal", "benign", "malignant")
            assert body["suspicious"] == (body["label"] == "malignant")
        elif has_gate:
            assert body["withheld"] is True, (name, body["gate_score"])
            assert body["gate_score"] is not None
            assert body["label"] == "" and body["probabilities"] is None
            assert body["mask_url"] is None and body["bbox"] is None
        else:
            assert body["withheld"] is False and body["gate_score"] is None
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
    if has_gate:
        assert "Not analysed: not a breast ultrasound image." in page.text
        assert 'class="probabilities"' not in page.text
    else:
        assert "<strong>Unusual for this model.</strong>" in page.text
        assert "a caution, not a verdict" in page.text

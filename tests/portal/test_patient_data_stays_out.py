"""Media is reachable only through permission-checked views, and patient names and
identifiers never reach a log line or a stored file name.

The permission matrix (tests/portal/accounts) checks every URL by role; this file checks
the files themselves: direct paths to stored files, and the file URLs as anonymous, as a
signed-in user without a role, and with that user's API token.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from PIL import Image

from ml.config import IMAGE_SIZE
from portal.analyses.models import ARTIFACT_KINDS, Analysis
from portal.clinical.models import Scan
from tests.hostile.corpus import good_dicom

pytestmark = pytest.mark.django_db

PATIENT_NAME = "Zebediah Quuxley"
PATIENT_ID = "MRN-55555-QX"
SECRETS = ("zebediah", "quuxley", "mrn-55555-qx", "55555")
FILE_MAGIC = (b"\x89PNG", b"%PDF", b"\xff\xd8", b"II*\x00", b"BM")


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (48, 64), np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


class _Fake:
    model_version = "test-model-1"
    # As the test model.json says: the model inputs stored with the uploads are read.
    image_size = IMAGE_SIZE

    def analyze(self, images: list[Any], *, batch_size: int = 8) -> list[Any]:
        from tests.workers.test_tasks import fake_result

        return [fake_result(image) for image in images]


@pytest.fixture
def pipeline(
    client, user, monkeypatch, caplog, settings, django_capture_on_commit_callbacks
):
    """Upload (page and API) and analyse scans of a patient whose name is everywhere."""
    from portal.accounts.tokens import token_issue
    from portal.clinical.services import patient_create, study_create
    from workers import tasks

    cache.clear()
    # Results recorded inline: the test's transaction is invisible to other threads.
    settings.ANALYSIS_RENDER_THREADS = 0
    monkeypatch.setattr(tasks, "get_analyzer", lambda version=None: _Fake())
    monkeypatch.setattr(
        "portal.analyses.queue.send_analysis",
        lambda analysis_id, *, countdown=None: None,
    )
    caplog.set_level(logging.DEBUG)
    patient = patient_create(identifier=PATIENT_ID, name=PATIENT_NAME)
    study = study_create(
        patient=patient, created_by=user, description=f"follow-up {PATIENT_NAME}"
    )
    named = f"Quuxley_Zebediah_{PATIENT_ID}"
    client.force_login(user)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(
            reverse("clinical:study_upload", args=[study.pk]),
            {
                "files": [
                    SimpleUploadedFile(f"{named}.png", _png(1)),
                    SimpleUploadedFile(
                        f"{named}.dcm",
                        good_dicom(
                            patient_name="Quuxley^Zebediah", patient_id=PATIENT_ID
                        ),
                    ),
                    SimpleUploadedFile(f"{named}-broken.png", b"not an image"),
                ]
            },
        )
        _, token = token_issue(user=user)
        Client().post(
            reverse("api:study-scans", args=[study.pk]),
            {"files": [SimpleUploadedFile(f"{named}-api.png", _png(2))]},
            HTTP_AUTHORIZATION=f"Token {token}",
        )
    analyses = list(Analysis.objects.filter(scan__study=study))
    assert len(analyses) == 3
    for analysis in analyses:
        tasks.analyze_scan.apply(args=[analysis.pk])
    client.get(reverse("clinical:study_detail", args=[study.pk]))
    client.get(reverse("clinical:study_status", args=[study.pk]))
    for analysis in analyses:
        for kind in ARTIFACT_KINDS:
            client.get(reverse("analyses:artifact", args=[analysis.pk, kind]))
    return study


def test_no_log_line_names_the_patient(pipeline, caplog):
    assert Analysis.objects.filter(status="succeeded").count() == 3
    records = caplog.get_records("setup")  # the pipeline ran in the fixture
    assert len(records) > 5, "nothing was logged: the test would prove nothing"
    text = "\n".join(caplog.handler.format(record) for record in records).lower()
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} in logs"


def test_no_stored_file_name_carries_patient_data(pipeline, media_root):
    names = [p.relative_to(media_root).as_posix() for p in media_root.rglob("*")]
    assert any(name.endswith(".dcm") for name in names)
    for name in names:
        for secret in SECRETS:
            assert secret not in name.lower(), name


def _file_urls(study: Any) -> list[str]:
    urls = []
    for scan in Scan.objects.filter(study=study):
        urls.append(reverse("clinical:scan_original", args=[scan.pk]))
        urls.append(reverse("api:scan-original", args=[scan.pk]))
        for analysis in scan.analyses.all():
            for kind in ARTIFACT_KINDS:
                urls.append(reverse("analyses:artifact", args=[analysis.pk, kind]))
                urls.append(reverse("api:analysis-artifact", args=[analysis.pk, kind]))
    for name in ("review:study_report",):
        urls.append(reverse(name, args=[study.pk]))
    return urls


def _leaked(response: Any) -> bool:
    if response.status_code != 200:
        return False
    body = (
        b"".join(response.streaming_content) if response.streaming else response.content
    )
    return body.startswith(FILE_MAGIC) or body[128:132] == b"DICM"


def test_file_urls_are_denied_to_anonymous_and_to_a_user_without_a_role(
    pipeline, make_user
):
    from portal.accounts.tokens import token_issue

    urls = _file_urls(pipeline)
    assert len(urls) >= 20
    nobody = make_user(None)
    signed_in = Client()
    signed_in.force_login(nobody)
    token = Client(HTTP_AUTHORIZATION=f"Token {token_issue(user=nobody)[1]}")
    for url in urls:
        for who, client in (
            ("anonymous", Client()),
            ("no role", signed_in),
            ("no-role token", token),
        ):
            response = client.get(url)
            assert not _leaked(response), f"{url} served to {who}"
            assert response.status_code in (302, 401, 403), (url, who, response)


def test_stored_files_have_no_direct_url_even_for_staff(
    pipeline, media_root, client, user
):
    client.force_login(user)
    stored = [p.relative_to(media_root).as_posix() for p in media_root.rglob("*.*")]
    assert stored
    for name in stored:
        for url in (
            f"/{name}",
            f"/media/{name}",
            f"/static/../media/{name}",
            f"/var/media/{name}",
        ):
            assert not _leaked(client.get(url)), url


def test_object_storage_is_private_and_signed(monkeypatch, tmp_path):
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "STORAGE_BACKEND": "s3",
        "AWS_STORAGE_BUCKET_NAME": "busai-test",
        "SECRET_KEY": "x" * 60,
    }
    script = (
        "import django; django.setup(); "
        "from django.core.files.storage import default_storage as d; "
        "from portal.storage import StorageURLRefused\n"
        "try:\n    d.url('analyses/1/mask.png'); refused = 'handed-out'\n"
        "except StorageURLRefused:\n    refused = 'refused'\n"
        "print(d.default_acl, d.querystring_auth, d.file_overwrite, refused)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.stdout.split() == ["private", "True", "False", "refused"], (
        result.stderr
    )

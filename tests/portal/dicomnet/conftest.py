"""A DICOM receiver in this test process, on a loopback port of its own."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from bench.launch import free_port

RECEIVER_AE = "BUSAI_TEST"
SCANNER_AE = "SCANNER1"


@pytest.fixture
def receiver(transactional_db: None) -> Iterator[dict[str, Any]]:
    """A receiver accepting SCANNER1 only; its association threads use the test database."""
    from portal.dicomnet.receiver import Receiver, receiver_user

    receiver = Receiver(
        ae_title=RECEIVER_AE,
        allowed_calling_ae_titles=[SCANNER_AE],
        uploaded_by=receiver_user("dicom-receiver"),
    )
    port = free_port()
    server = receiver.start(("127.0.0.1", port))
    yield {"port": port, "ae_title": RECEIVER_AE, "receiver": receiver}
    server.shutdown()


def store_scan(study: Any, user: Any, content: bytes, name: str = "scan.dcm") -> Any:
    """A scan stored through the same service as an upload (its analysis is queued)."""
    from portal.analyses.services import scan_submit
    from portal.clinical.uploads import validate_content
    from tests.conftest import TEST_MODEL_VERSION

    upload = validate_content(filename=name, content=content)
    return scan_submit(
        study=study, upload=upload, uploaded_by=user, model_version=TEST_MODEL_VERSION
    )


def finish_analysis(
    scan: Any,
    *,
    mask: Any = None,
    probabilities: dict[str, float] | None = None,
) -> Any:
    """Record a result for the scan's queued analysis the way a worker does."""
    import io

    import numpy as np
    from PIL import Image

    from portal.analyses import services

    analysis = scan.analyses.get()
    assert services.analysis_claim(analysis_id=analysis.pk, worker="test")
    if mask is None:
        mask = np.zeros((scan.height, scan.width), bool)
        mask[10:30, 20:40] = True
    probabilities = probabilities or {"normal": 0.1, "benign": 0.2, "malignant": 0.7}
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buffer, format="PNG")
    rows, columns = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    bbox = (
        [int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1]
        if rows.size
        else None
    )
    label = max(probabilities, key=probabilities.get)
    services.analysis_record_success(
        analysis_id=analysis.pk,
        result={
            "label": label,
            "probabilities": probabilities,
            "confidence": probabilities[label],
            "lesion_area_fraction": float(mask.mean()),
            "bbox": bbox,
        },
        artifacts={"mask": buffer.getvalue()},
    )
    analysis.refresh_from_db()
    return analysis


def signed_review(analysis: Any, make_user: Any, *, birads: str, note: str = "") -> Any:
    """A benign reading signed by radiologist Ada Reader, disagreeing with the model."""
    from portal.review.services import review_save

    reader = make_user("radiologist", "dr-reader")
    reader.first_name, reader.last_name = "Ada", "Reader"
    reader.save()
    return review_save(
        analysis=analysis,
        author=reader,
        sign=True,
        agrees_with_model=False,
        label="benign",
        birads=birads,
        note=note,
    )


def start_storescp(folder: Any, port: int, ae_title: str) -> Any:
    """DCMTK's storage SCP (the PACS of the tests), writing what it gets into folder."""
    import subprocess
    import time

    process = subprocess.Popen(
        ["storescp", "-aet", ae_title, "-od", str(folder), "--fork", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError("storescp did not start") from None
            time.sleep(0.1)


def finished_batch(timeout: float = 20) -> Any:
    """The association's batch once its report is closed (at release, in its thread)."""
    import time

    from portal.ingest.models import UploadBatch

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = UploadBatch.objects.filter(finished_at__isnull=False).first()
        if batch is not None:
            return batch
        time.sleep(0.05)
    raise AssertionError("the association's upload report was never closed")


def listener_env(
    *,
    port: int,
    redis_url: str,
    queue: str,
    media_root: Any,
    weights_dir: Any,
    ae_title: str,
    allowed: str,
    **more: str,
) -> dict[str, str]:
    """The whole environment of `manage.py dicom_listener` as deployed, on this test's
    database, storage and Redis queue; `more` adds settings (DICOM_TLS_*)."""
    import os

    from django.conf import settings
    from django.db import connection

    from bench.launch import database_url

    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "DATABASE_URL": database_url(connection.settings_dict),
        "REDIS_URL": redis_url,
        "CELERY_INFERENCE_QUEUE": queue,
        "MEDIA_ROOT": str(media_root),
        "STORAGE_BACKEND": "local",
        "ML_WEIGHTS_DIR": str(weights_dir),
        "SECRET_KEY": settings.SECRET_KEY,
        "DICOM_AE_TITLE": ae_title,
        "DICOM_PORT": str(port),
        "DICOM_ALLOWED_CALLING_AE_TITLES": allowed,
        "PYTHONUNBUFFERED": "1",
        **more,
    }


def redis_or_skip(db: int) -> tuple[Any, str]:
    """A client of Redis database db on the configured server, and its URL; skips the
    test where that server is not reachable."""
    import redis
    from django.conf import settings

    from bench.launch import redis_url_with_db

    url = redis_url_with_db(settings.REDIS_URL, db)
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip(f"Redis is not reachable at {url}")
    return client, url


def read_seg(content: bytes) -> Any:
    """A SEG read with highdicom's reader.

    highdicom (0.28) refuses a Pixel Measures item without Slice Thickness, which the
    standard does not require of a SEG without a Frame of Reference (CP 1426) and which a
    2D ultrasound image cannot give. The item is checked here and then left out of the
    copy highdicom reads; everything else is highdicom's own reading.
    """
    import io

    import highdicom as hd
    import pydicom

    dataset = pydicom.dcmread(io.BytesIO(content))
    shared = dataset.SharedFunctionalGroupsSequence[0]
    if "PixelMeasuresSequence" in shared:
        (measures,) = shared.PixelMeasuresSequence
        assert "FrameOfReferenceUID" not in dataset
        assert len(measures.PixelSpacing) == 2
        del shared.PixelMeasuresSequence
    return hd.seg.Segmentation.from_dataset(dataset)

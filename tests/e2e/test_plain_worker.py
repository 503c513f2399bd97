"""A worker started as Celery's documentation starts one, `celery -A workers worker` with
no -Q, runs analyses: the settings declare the queues, so it consumes all of them.

Before they were declared, such a worker listened on "celery" alone and a scan stayed
"queued" for good.
"""

from __future__ import annotations

import os
import time

import pytest

from bench.launch import tail
from tests.conftest import SCANS_DIR
from tests.e2e.conftest import PIXEL_LIMIT

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

TIMEOUT_S = float(os.environ.get("E2E_TIMEOUT", "420"))


def _fixture_scan() -> bytes:
    """A real breast ultrasound scan: a flat grey frame is withheld by the gate (issue 16)
    and would leave no label to check."""
    return min((SCANS_DIR / "benign").glob("*.png")).read_bytes()


def test_a_worker_started_without_queue_options_finishes_an_analysis(
    plain_worker, real_weights_dir, study, user, settings
):
    from portal.analyses.modelinfo import current_model_version
    from portal.analyses.models import Analysis
    from portal.analyses.services import scan_submit
    from portal.clinical.uploads import validate_content

    settings.UPLOAD_MAX_PIXELS = PIXEL_LIMIT
    process, log_path = plain_worker
    assert "-Q" not in process.args and "--queues" not in process.args
    scan = scan_submit(
        study=study,
        upload=validate_content(filename="scan.png", content=_fixture_scan()),
        uploaded_by=user,
        model_version=current_model_version(real_weights_dir),
    )
    analysis = Analysis.objects.get(scan=scan)

    deadline = time.monotonic() + TIMEOUT_S
    while True:
        analysis.refresh_from_db()
        if analysis.status in {Analysis.Status.SUCCEEDED, Analysis.Status.FAILED}:
            break
        assert process.poll() is None, f"worker died:\n{tail(log_path)}"
        assert time.monotonic() < deadline, (
            f"still {analysis.status} after {TIMEOUT_S}s\n{tail(log_path)}"
        )
        time.sleep(1)
    assert analysis.status == Analysis.Status.SUCCEEDED, (
        f"{analysis.error}\n{tail(log_path)}"
    )
    assert analysis.label in {"normal", "benign", "malignant"}

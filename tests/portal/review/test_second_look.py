"""The second look (the model again on a zoomed crop around the lesion it found) is
recorded from the worker's result and said on the review page and in the study feed."""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.urls import reverse
from PIL import Image

from portal.analyses.models import Analysis
from portal.analyses.services import scan_submit
from portal.clinical.uploads import validate_content
from tests.conftest import TEST_MODEL_VERSION
from tests.portal.review.conftest import VERDICT, verdict_artifacts
from tests.results import record_result

pytestmark = pytest.mark.django_db


def _recorded(study, user, **fields) -> Analysis:
    buffer = io.BytesIO()
    Image.fromarray(np.full((48, 64), 80, np.uint8)).save(buffer, "PNG")
    upload = validate_content(filename="scan.png", content=buffer.getvalue())
    scan = scan_submit(
        study=study, upload=upload, uploaded_by=user, model_version=TEST_MODEL_VERSION
    )
    analysis = scan.analyses.get()
    assert record_result(
        analysis, artifacts=verdict_artifacts(48, 64), **VERDICT, **fields
    )
    analysis.refresh_from_db()
    return analysis


@pytest.mark.parametrize("looked", [True, False, None])
def test_the_second_look_is_recorded_and_said(client, radiologist, study, user, looked):
    fields = {} if looked is None else {"looked_again": looked}
    analysis = _recorded(study, user, **fields)
    assert analysis.looked_again is bool(looked)  # a result without the key: one look

    client.force_login(radiologist)
    page = client.get(reverse("review:scan_review", args=[analysis.scan_id]))
    assert page.status_code == 200
    assert ('id="second-look"' in page.content.decode()) is bool(looked)
    feed = client.get(reverse("clinical:study_status", args=[study.pk])).json()
    assert feed["scans"][0]["analysis"]["looked_again"] is bool(looked)

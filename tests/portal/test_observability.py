"""/metrics for a scraper, and structured logs with ids (never patient data)."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from portal.analyses.models import Analysis
from portal.analyses.services import scan_submit
from portal.clinical.uploads import validate_content
from portal.logs import ContextFilter, JsonFormatter, log_context
from tests.conftest import TEST_MODEL_VERSION

TOKEN = "scrape-token-for-tests-0123456789"


@pytest.fixture
def analyses(study: Any, user: Any, make_png: Any) -> list[Analysis]:
    made = []
    for index in range(4):
        scan = scan_submit(
            study=study,
            upload=validate_content(
                filename=f"{index}.png", content=make_png(40 + index, 32)
            ),
            uploaded_by=user,
            model_version=TEST_MODEL_VERSION,
        )
        made.append(scan.analyses.get())
    now = timezone.now()
    Analysis.objects.filter(pk=made[0].pk).update(
        status="succeeded",
        started_at=now - timedelta(seconds=3),
        finished_at=now,
    )
    Analysis.objects.filter(pk=made[1].pk).update(
        status="succeeded",
        started_at=now - timedelta(seconds=40),
        finished_at=now,
    )
    Analysis.objects.filter(pk=made[2].pk).update(
        status="failed", started_at=now, finished_at=now
    )
    return made


def _samples(text: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_a_scraper_with_the_token_reads_analyses_queue_and_timing(
    client, analyses, settings
):
    settings.METRICS_TOKEN = TOKEN
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"  # down: reported, not fatal

    response = client.get(reverse("metrics"), HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = _samples(response.text)
    assert samples['busai_analyses{status="queued"}'] == 1
    assert samples['busai_analyses{status="succeeded"}'] == 2
    assert samples['busai_analyses{status="failed"}'] == 1
    assert samples['busai_analyses{status="running"}'] == 0
    assert samples['busai_analysis_duration_seconds_bucket{le="5"}'] == 1
    assert samples['busai_analysis_duration_seconds_bucket{le="60"}'] == 2
    assert samples['busai_analysis_duration_seconds_bucket{le="+Inf"}'] == 2
    assert samples["busai_analysis_duration_seconds_sum"] == pytest.approx(43, abs=1)
    assert samples["busai_analysis_oldest_queued_seconds"] >= 0
    assert samples["busai_broker_up"] == 0
    assert "# TYPE busai_analysis_duration_seconds histogram" in response.text


def test_queue_depth_comes_from_the_broker(client, db, settings):
    from tests.e2e.conftest import redis_reachable

    settings.METRICS_TOKEN = TOKEN
    url = "redis://127.0.0.1:6379/12"
    if not redis_reachable(url):
        pytest.skip("Redis is not reachable")
    import redis

    broker = redis.Redis.from_url(url)
    broker.flushdb()
    broker.lpush(settings.CELERY_INFERENCE_QUEUE, b"{}", b"{}", b"{}")
    settings.CELERY_BROKER_URL = url
    try:
        response = client.get(reverse("metrics"), HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    finally:
        broker.flushdb()
    samples = _samples(response.text)
    assert samples["busai_broker_up"] == 1
    queue = settings.CELERY_INFERENCE_QUEUE
    assert samples[f'busai_queue_depth{{queue="{queue}"}}'] == 3


def test_metrics_are_refused_without_the_token_or_staff(client, user, settings, db):
    settings.METRICS_TOKEN = TOKEN
    assert client.get(reverse("metrics")).status_code == 403
    wrong = client.get(reverse("metrics"), HTTP_AUTHORIZATION="Bearer nope")
    assert wrong.status_code == 403
    client.force_login(user)  # a clinician, not staff
    assert client.get(reverse("metrics")).status_code == 403


def test_staff_can_read_metrics_in_a_browser(client, staff_user, settings):
    settings.METRICS_TOKEN = ""
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    client.force_login(staff_user)
    assert client.get(reverse("metrics")).status_code == 200


def test_an_empty_token_setting_never_matches_an_empty_bearer(client, db, settings):
    settings.METRICS_TOKEN = ""
    response = client.get(reverse("metrics"), HTTP_AUTHORIZATION="Bearer ")
    assert response.status_code == 403


def _json_line(message: str, *args: Any, **ids: Any) -> dict[str, Any]:
    record = logging.LogRecord(
        "workers.tasks", logging.INFO, __file__, 1, message, args, None
    )
    with log_context(**ids):
        ContextFilter().filter(record)
    return json.loads(JsonFormatter().format(record))


def test_json_log_lines_carry_the_ids_of_what_is_being_worked_on():
    entry = _json_line("analysis %s succeeded", 7, analysis_id=7, scan_id=3)
    assert entry["message"] == "analysis 7 succeeded"
    assert entry["analysis_id"] == 7
    assert entry["scan_id"] == 3
    assert entry["level"] == "INFO"
    assert entry["logger"] == "workers.tasks"


def test_contexts_nest_and_unwind():
    with log_context(request_id="r1"), log_context(analysis_id=5):
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)
        ContextFilter().filter(record)
    assert (record.request_id, record.analysis_id) == ("r1", 5)
    after = logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)
    ContextFilter().filter(after)
    assert not hasattr(after, "analysis_id")


def test_every_response_names_its_request_id(client, db):
    response = client.get(reverse("healthz"), HTTP_X_REQUEST_ID="abc-123")
    assert response["X-Request-ID"] == "abc-123"
    odd = client.get(reverse("healthz"), HTTP_X_REQUEST_ID="<script>")
    assert odd["X-Request-ID"] != "<script>"

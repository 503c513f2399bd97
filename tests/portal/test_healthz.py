from __future__ import annotations

import pytest
import redis
from django.urls import reverse

pytestmark = pytest.mark.django_db


def _redis_up(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def test_healthz_is_public_and_reports_each_dependency(client, settings):
    if not _redis_up(settings.CELERY_BROKER_URL):
        pytest.skip(f"no Redis at {settings.CELERY_BROKER_URL}")
    response = client.get(reverse("healthz"))
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "broker": "ok"}


def test_healthz_is_503_when_the_broker_is_down(client, settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    response = client.get(reverse("healthz"))
    assert response.status_code == 503
    assert response.json()["broker"] == "unreachable"
    assert response.json()["database"] == "ok"


def test_static_files_are_served_without_login_even_outside_debug(client, settings):
    settings.DEBUG = False
    response = client.get("/static/portal/study.js")
    assert response.status_code == 200
    assert b"status" in b"".join(response.streaming_content)
    assert client.get("/static/admin/css/base.css").status_code == 200
    assert client.get("/static/../settings.py").status_code in (400, 404)

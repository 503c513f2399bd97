from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings

from workers.launch import point_celery_at, redis_url_with_db

E2E_REDIS_DB = 15


def redis_reachable(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=2).ping())
    except redis.RedisError:
        return False


@pytest.fixture
def e2e_broker(settings: Any) -> Any:
    """A dedicated Redis database and a queue of this test's own.

    The queue name is unique so that test runs side by side (or a worker left over from
    a killed run) never take each other's messages; nothing is flushed for the same reason.
    """
    from workers import app

    url = redis_url_with_db(settings.REDIS_URL, E2E_REDIS_DB)
    if not redis_reachable(url):
        pytest.skip(f"Redis is not reachable at {url} (set REDIS_URL or start Redis)")
    queue = f"inference-e2e-{uuid.uuid4().hex[:12]}"
    previous = app.conf.broker_url
    settings.CELERY_BROKER_URL = url
    settings.CELERY_INFERENCE_QUEUE = queue
    point_celery_at(url)
    yield url
    point_celery_at(previous)
    client = redis.Redis.from_url(url)
    client.delete(queue)
    client.close()


@pytest.fixture
def real_weights_dir() -> Path:
    directory = Path(settings.ML_WEIGHTS_DIR)
    if not (directory / "model.json").exists():
        pytest.skip(f"no trained model at {directory}/model.json (set ML_WEIGHTS_DIR)")
    return directory


@pytest.fixture
def busi_dir() -> Path:
    directory = Path(settings.BUSI_DIR)
    if not (directory / "benign").is_dir() or not (directory / "malignant").is_dir():
        pytest.skip(f"BUSI dataset not found at {directory} (set BUSI_DIR)")
    return directory

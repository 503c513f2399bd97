from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from django.db import connection

from bench.launch import (
    database_url,
    point_celery_at,
    redis_url_with_db,
    start_worker,
    stop_worker,
)

E2E_REDIS_DB = 15
# The tests' upload pixel limit, which the worker decoding stored scans must share.
PIXEL_LIMIT = 1_000_000


def redis_reachable(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=2).ping())
    except redis.RedisError:
        return False


def api_study(api: Any, base: str, patient: dict[str, str], accession: str) -> int:
    """A patient and a study of theirs, created through the API (base: its root, e.g.
    .../api/v1) by a signed-in requests session; returns the study's id."""
    created = api.post(f"{base}/patients/", json=patient, timeout=30)
    assert created.status_code == 201, created.text
    study = api.post(
        f"{base}/studies/",
        json={"patient": patient["identifier"], "accession_number": accession},
        timeout=30,
    )
    assert study.status_code == 201, study.text
    return int(study.json()["id"])


@pytest.fixture
def e2e_broker(settings: Any) -> Any:
    """A dedicated Redis database and queues of this test's own (analyses, shadow runs).

    The queue names are unique so that test runs side by side (or a worker left over from
    a killed run) never take each other's messages; nothing is flushed for the same reason.
    """
    from workers import app

    url = redis_url_with_db(settings.REDIS_URL, E2E_REDIS_DB)
    if not redis_reachable(url):
        pytest.skip(f"Redis is not reachable at {url} (set REDIS_URL or start Redis)")
    run = uuid.uuid4().hex[:12]
    queues = (f"inference-e2e-{run}", f"shadow-e2e-{run}")
    previous = app.conf.broker_url
    settings.CELERY_BROKER_URL = url
    settings.CELERY_INFERENCE_QUEUE, settings.CELERY_SHADOW_QUEUE = queues
    point_celery_at(url)
    yield url
    point_celery_at(previous)
    client = redis.Redis.from_url(url)
    # With each priority's list (kombu keeps priority 9 in "<queue>\x06\x169").
    client.delete(
        *queues, *(f"{name}\x06\x16{p}" for name in queues for p in (3, 6, 9))
    )
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


@pytest.fixture
def worker_env() -> dict[str, str]:
    """More environment for the test's worker; a test module overrides this fixture
    (the S3 test gives the worker its storage settings this way)."""
    return {}


def _run_worker(
    request: pytest.FixtureRequest,
    broker: str,
    media_root: Path,
    log_path: Path,
    queues: list[str] | None,
    env: dict[str, str],
) -> Iterator[tuple[Any, Path]]:
    process = start_worker(
        database=database_url(connection.settings_dict),
        broker=broker,
        media_root=media_root,
        log_path=log_path,
        extra_env={"UPLOAD_MAX_PIXELS": str(PIXEL_LIMIT), **env},
        name=request.node.module.__name__.rsplit(".", 1)[-1],
        queues=queues,
    )
    yield process, log_path
    stop_worker(process)
    # Closes the worker's database connections before the test database is flushed.
    connection.close()


@pytest.fixture
def worker_for_test(
    request: pytest.FixtureRequest,
    e2e_broker: str,
    media_root: Path,
    real_weights_dir: Path,
    tmp_path: Path,
    worker_env: dict[str, str],
) -> Callable[[list[str] | None], Iterator[tuple[Any, Path]]]:
    """Starts a worker with the real model on this test's database, broker and storage,
    consuming the given queues (None: as Celery starts one, without -Q)."""

    def start(queues: list[str] | None) -> Iterator[tuple[Any, Path]]:
        return _run_worker(
            request, e2e_broker, media_root, tmp_path / "worker.log", queues, worker_env
        )

    return start


@pytest.fixture
def real_worker(worker_for_test: Any) -> Iterator[tuple[Any, Path]]:
    """A dedicated analysis worker, `celery -A workers worker -Q <inference>,<shadow>`
    (the form a GPU worker takes: analyses first, the shadow model's runs when none
    waits)."""
    yield from worker_for_test(
        [settings.CELERY_INFERENCE_QUEUE, settings.CELERY_SHADOW_QUEUE]
    )


@pytest.fixture
def plain_worker(worker_for_test: Any) -> Iterator[tuple[Any, Path]]:
    """`celery -A workers worker` with no -Q, as Celery's documentation starts one."""
    yield from worker_for_test(None)

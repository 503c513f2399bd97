"""The shadow model version runs as a task of its own, never on the analyses' path: real
workers on real Redis, the shipped model active and a tiny installed model in shadow.

A worker that consumes the analyses' queue alone finishes every analysis while the
shadow's messages wait, at the lowest priority, on the shadow queue. Each of those
messages is then delivered twice, as Redis does after a lost acknowledgement, to a worker
started as the GPU worker is (`-Q <inference>,<shadow>`): one comparison per analysis,
the model run once per batch, and the analyses as they were.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from bench.launch import tail
from tests.conftest import SCANS_DIR
from tests.e2e.conftest import PIXEL_LIMIT

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

TIMEOUT_S = float(os.environ.get("E2E_TIMEOUT", "420"))
SCANS = ("benign/case014.jpg", "benign/case056.png", "malignant/case050.png")
# kombu's Redis list for a queue's priority-9 messages.
LOWEST_PRIORITY = "\x06\x169"


@pytest.fixture
def worker_env(settings: Any, tmp_path: Path) -> dict[str, str]:
    """The workers find installed model versions where the test installs them."""
    settings.ML_MODELS_DIR = tmp_path / "models"
    return {"ML_MODELS_DIR": str(settings.ML_MODELS_DIR)}


@pytest.fixture
def shadow_version(
    worker_env: dict[str, str], tmp_path: Path, make_user: Any, real_weights_dir: Path
) -> str:
    """A tiny untrained model, of another input size than the shipped one, installed and
    run in shadow by an administrator."""
    from ml import weights_io
    from ml.config import CLASSES, MODEL_NAME
    from ml.model import build_busnet
    from portal.registry.services import model_shadow_set, model_version_install

    folder = tmp_path / "tiny"
    weights_io.save(
        build_busnet(64),
        folder,
        weights_io.ModelMeta(
            name=MODEL_NAME,
            version="",
            image_size=64,
            classes=list(CLASSES),
            training={"sources": ["busi"]},
        ),
    )
    admin = make_user("administrator", "admin")
    record = model_version_install(source=folder, installed_by=admin)
    model_shadow_set(model_version=record, user=admin, reason="compare it")
    return record.version


@contextmanager
def _worker(
    start: Callable[[list[str] | None], Iterator[tuple[Any, Path]]], queues: list[str]
) -> Iterator[tuple[Any, Path]]:
    run = start(queues)
    try:
        yield next(run)
    finally:
        next(run, None)  # stops the worker


def _wait(what: str, done: Callable[[], bool], process: Any, log_path: Path) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not done():
        assert process.poll() is None, f"worker died:\n{tail(log_path)}"
        assert time.monotonic() < deadline, f"{what}: timed out\n{tail(log_path)}"
        time.sleep(1)


def _task_of(raw: bytes) -> tuple[str, list[Any], int | None]:
    """A waiting message's task name, arguments and priority."""
    message = json.loads(raw)
    args = json.loads(base64.b64decode(message["body"]))[0]
    return message["headers"]["task"], args, message["properties"].get("priority")


def test_analyses_are_shown_without_waiting_for_the_shadow_and_redelivery_adds_nothing(
    worker_for_test, shadow_version, real_weights_dir, e2e_broker, study, user, settings
):
    from ml.config import CLASSES
    from portal.analyses.modelinfo import current_model_version
    from portal.analyses.models import Analysis, ShadowResult
    from portal.analyses.services import scan_submit
    from portal.clinical.uploads import validate_content
    from workers.tasks import SHADOW_ANALYSES

    settings.UPLOAD_MAX_PIXELS = PIXEL_LIMIT
    inference, shadow_queue = (
        settings.CELERY_INFERENCE_QUEUE,
        settings.CELERY_SHADOW_QUEUE,
    )
    broker = redis.Redis.from_url(e2e_broker)
    waiting_key = shadow_queue + LOWEST_PRIORITY

    # A worker for the analyses alone: every result is shown, no shadow ever runs.
    with _worker(worker_for_test, [inference]) as (process, log_path):
        ids = [
            Analysis.objects.get(
                scan=scan_submit(
                    study=study,
                    upload=validate_content(
                        filename=Path(name).name,
                        content=(SCANS_DIR / name).read_bytes(),
                    ),
                    uploaded_by=user,
                    model_version=current_model_version(real_weights_dir),
                )
            ).pk
            for name in SCANS
        ]
        _wait(
            "the analyses",
            lambda: (
                not Analysis.objects.filter(
                    pk__in=ids, finished_at__isnull=True
                ).exists()
            ),
            process,
            log_path,
        )
        # Sent once each batch was stored: the last may be a moment behind its results.
        _wait(
            "the shadow's messages",
            lambda: (
                sorted(
                    i
                    for raw in broker.lrange(waiting_key, 0, -1)
                    for i in _task_of(raw)[1][0]
                )
                == sorted(ids)
            ),
            process,
            log_path,
        )
    shown = {row["id"]: row for row in Analysis.objects.filter(pk__in=ids).values()}
    assert [shown[i]["status"] for i in ids] == ["succeeded"] * len(ids), [
        shown[i]["error"] for i in ids
    ]
    assert not ShadowResult.objects.exists()
    messages = broker.lrange(waiting_key, 0, -1)
    assert broker.llen(shadow_queue) == 0  # all of them at the lowest priority
    for raw in messages:
        assert _task_of(raw)[0] == SHADOW_ANALYSES
        assert _task_of(raw)[1][1] == shadow_version
    # Each message delivered twice (the same task id): a redelivery.
    for raw in messages:
        broker.lpush(waiting_key, raw)

    # The GPU worker's form takes the shadow's runs once no analysis waits.
    with _worker(worker_for_test, [inference, shadow_queue]) as (process, log_path):

        def runs_done() -> bool:
            lines = log_path.read_text(errors="replace").splitlines()
            done = [
                line
                for line in lines
                if f"{SHADOW_ANALYSES}[" in line and " succeeded in " in line
            ]
            return len(done) == 2 * len(messages)

        _wait("the shadow runs", runs_done, process, log_path)
        log = log_path.read_text(errors="replace")
    assert broker.llen(waiting_key) == 0
    # One model run per batch: each redelivered message found its results recorded.
    assert log.count(f"shadow {shadow_version} ran on analyses") == len(messages)
    assert log.count("need no shadow run") == len(messages)

    results = list(ShadowResult.objects.filter(analysis__in=ids))
    assert sorted(r.analysis_id for r in results) == sorted(ids)
    for result in results:
        assert result.model_version == shadow_version and not result.error
        assert result.withheld or result.label in CLASSES
        if not (result.withheld or shown[result.analysis_id]["withheld"]):
            assert 0.0 <= result.mask_dice <= 1.0
    assert sum(r.mask_dice is not None for r in results) >= 1
    # The analyses as they were shown: nothing on them changed.
    assert {
        row["id"]: row for row in Analysis.objects.filter(pk__in=ids).values()
    } == shown
    broker.close()

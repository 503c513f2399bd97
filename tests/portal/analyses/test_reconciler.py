"""The reconciler: lost workers, lost messages, bounded attempts, dry runs."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
import redis
from django.core.management import call_command
from django.utils import timezone

from bench.launch import redis_url_with_db
from portal.analyses import broker, queue, services
from portal.analyses.models import Analysis
from portal.analyses.queue import send_analysis as really_send
from portal.analyses.reconciler import reconcile, rescue_dead_workers
from portal.analyses.services import scan_submit
from portal.clinical.uploads import validate_content
from tests.conftest import TEST_MODEL_VERSION
from tests.e2e.conftest import redis_reachable
from tests.results import model_result

Status = Analysis.Status
BROKER_TEST_DB = 13


@pytest.fixture
def make_analysis(study: Any, user: Any, make_png: Any):
    def make(name: str = "a.png") -> Analysis:
        scan = scan_submit(
            study=study,
            upload=validate_content(filename=name, content=make_png()),
            uploaded_by=user,
            model_version=TEST_MODEL_VERSION,
        )
        return scan.analyses.get()

    return make


def _age(analysis: Analysis, **fields: Any) -> None:
    Analysis.objects.filter(pk=analysis.pk).update(**fields)
    analysis.refresh_from_db()


def _long_ago(seconds: float) -> Any:
    return timezone.now() - timedelta(seconds=seconds + 5)


def _dead_worker_and_lost_message(
    make_analysis: Any, settings: Any
) -> tuple[Analysis, Analysis]:
    """A row running on a silent worker, and a row queued long ago with no message."""
    running, queued = make_analysis("r.png"), make_analysis("q.png")
    services.analysis_claim(analysis_id=running.pk, worker="dead:1")
    _age(running, heartbeat_at=_long_ago(settings.ANALYSIS_STALE_RUNNING_SECONDS))
    _age(queued, queued_at=_long_ago(settings.ANALYSIS_STALE_QUEUED_SECONDS))
    return running, queued


def _assert_queued_and_sent_again(
    analysis: Analysis, enqueued: list, reason: str
) -> None:
    """The sweep queued the row again, saying why, and sent its message (and no other)."""
    assert [pk for pk, _ in enqueued] == [analysis.pk]
    analysis.refresh_from_db()
    assert analysis.status == Status.QUEUED
    assert reason in analysis.error


def test_a_running_row_whose_worker_was_lost_is_requeued_and_sent_again(
    make_analysis, settings, enqueued
):
    analysis = make_analysis()
    services.analysis_claim(analysis_id=analysis.pk, worker="dead:1")
    _age(analysis, heartbeat_at=_long_ago(settings.ANALYSIS_STALE_RUNNING_SECONDS))
    enqueued.clear()

    result = reconcile(ids_in_broker=set())

    assert result.requeued == [analysis.pk]
    _assert_queued_and_sent_again(analysis, enqueued, "stopped without a result")


def test_a_slow_analysis_whose_worker_beats_is_left_alone_however_long_it_runs(
    make_analysis, settings, enqueued
):
    analysis = make_analysis()
    services.analysis_claim(analysis_id=analysis.pk, worker="busy:1")
    _age(analysis, started_at=_long_ago(settings.ANALYSIS_TIME_LIMIT * 3))
    assert services.analyses_heartbeat(worker="busy:1") == 1
    enqueued.clear()

    assert reconcile(ids_in_broker=set()).counts() == {
        "requeued": 0,
        "failed": 0,
        "resent": 0,
    }
    assert enqueued == []


def test_a_lost_worker_on_the_last_attempt_fails_the_row_with_a_reason(
    make_analysis, settings, enqueued
):
    analysis = make_analysis()
    services.analysis_claim(analysis_id=analysis.pk, worker="dead:1")
    _age(
        analysis,
        attempts=settings.ANALYSIS_MAX_ATTEMPTS,
        heartbeat_at=_long_ago(settings.ANALYSIS_STALE_RUNNING_SECONDS),
    )
    enqueued.clear()

    result = reconcile(ids_in_broker=set())

    assert result.failed == [analysis.pk]
    assert enqueued == []
    analysis.refresh_from_db()
    assert analysis.status == Status.FAILED
    assert analysis.error.startswith(
        f"gave up after {settings.ANALYSIS_MAX_ATTEMPTS} attempts"
    )


def test_a_queued_row_whose_message_was_lost_is_resent_once_per_sweep(
    make_analysis, settings, enqueued
):
    analysis = make_analysis()
    _age(analysis, queued_at=_long_ago(settings.ANALYSIS_STALE_QUEUED_SECONDS))
    enqueued.clear()

    result = reconcile(ids_in_broker=set())

    assert result.resent == [analysis.pk]
    _assert_queued_and_sent_again(analysis, enqueued, "message was lost")
    assert analysis.attempts == 1
    # The next sweep waits a full period again before resending.
    assert reconcile(ids_in_broker=set()).resent == []


def test_a_queued_row_whose_message_is_still_waiting_is_not_resent(
    make_analysis, settings, enqueued
):
    analysis = make_analysis()
    _age(analysis, queued_at=_long_ago(settings.ANALYSIS_STALE_QUEUED_SECONDS))
    enqueued.clear()

    result = reconcile(ids_in_broker={analysis.pk})

    assert result.resent == []
    assert result.waiting == [analysis.pk]
    assert enqueued == []


def test_messages_that_keep_vanishing_end_in_a_failure_not_a_loop(
    make_analysis, settings, enqueued
):
    analysis = make_analysis()
    sweeps = 0
    while analysis.status == Status.QUEUED and sweeps < 10:
        _age(analysis, queued_at=_long_ago(settings.ANALYSIS_STALE_QUEUED_SECONDS))
        reconcile(ids_in_broker=set())
        analysis.refresh_from_db()
        sweeps += 1

    assert analysis.status == Status.FAILED
    assert sweeps == settings.ANALYSIS_MAX_ATTEMPTS + 1
    assert "message was lost" in analysis.error


def test_a_dry_run_reports_but_changes_and_sends_nothing(
    make_analysis, settings, enqueued
):
    running, queued = _dead_worker_and_lost_message(make_analysis, settings)
    enqueued.clear()
    before = list(Analysis.objects.order_by("pk").values())

    result = reconcile(dry_run=True, ids_in_broker=set())

    assert result.requeued == [running.pk]
    assert result.resent == [queued.pk]
    assert enqueued == []
    assert list(Analysis.objects.order_by("pk").values()) == before


def test_the_command_dry_run_lists_ids_and_changes_nothing(
    make_analysis, settings, enqueued, monkeypatch
):
    queued = make_analysis()
    _age(queued, queued_at=_long_ago(settings.ANALYSIS_STALE_QUEUED_SECONDS))
    monkeypatch.setattr(broker, "analysis_ids_with_messages", lambda: set())
    enqueued.clear()
    out = StringIO()

    call_command("reconcile_analyses", "--dry-run", stdout=out)

    assert f"1 would be resent [{queued.pk}]" in out.getvalue()
    assert enqueued == []
    queued.refresh_from_db()
    assert queued.attempts == 0

    call_command("reconcile_analyses", stdout=out)
    assert f"1 were resent [{queued.pk}]" in out.getvalue()
    assert [pk for pk, _ in enqueued] == [queued.pk]


def test_an_unreachable_broker_skips_the_resend_and_says_why(
    make_analysis, settings, enqueued
):
    queued = make_analysis()
    _age(queued, queued_at=_long_ago(settings.ANALYSIS_STALE_QUEUED_SECONDS))
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    enqueued.clear()

    result = reconcile()

    assert result.resent == []
    assert "unreachable" in result.broker_error
    assert enqueued == []


def _point_celery_at(app: Any, url: str) -> None:
    app.conf.broker_url = url
    # Connections and producers are created lazily and cached: drop them.
    if app._pool is not None:
        app._pool.force_close_all()
        app._pool = None
    app.amqp._producer_pool = None


@pytest.fixture
def broker_db(settings: Any) -> Any:
    """A private Redis database as the broker, flushed before and after."""
    app = queue.app
    url = redis_url_with_db(settings.REDIS_URL, BROKER_TEST_DB)
    if not redis_reachable(url):
        pytest.skip(f"Redis is not reachable at {url}")
    client = redis.Redis.from_url(url)
    client.flushdb()
    previous = app.conf.broker_url
    settings.CELERY_BROKER_URL = url
    _point_celery_at(app, url)
    yield client
    _point_celery_at(app, previous)
    client.flushdb()
    client.close()


def test_the_broker_reader_finds_waiting_and_unacknowledged_analysis_messages(
    broker_db, settings
):
    # The real send, not the `enqueued` recorder that replaces queue.send_analysis.
    really_send(41)
    really_send(42, countdown=60)
    queue.app.send_task("some.other.task", queue="celery")
    # What a worker holding a delivered message leaves in the broker.
    waiting = broker_db.rpop(settings.CELERY_INFERENCE_QUEUE)
    broker_db.hset(
        broker.UNACKED_KEY,
        "tag-1",
        b"[" + waiting + b', "", "' + settings.CELERY_INFERENCE_QUEUE.encode() + b'"]',
    )

    assert broker.analysis_ids_with_messages() == {41, 42}
    depths = broker.queue_depths()
    assert depths[settings.CELERY_INFERENCE_QUEUE] == 1
    assert depths["celery"] == 1
    assert depths["unacked"] == 1


def test_files_left_by_a_killed_worker_are_replaced_not_duplicated(
    make_analysis, media_root
):
    analysis = make_analysis()
    services.analysis_claim(analysis_id=analysis.pk, worker="w:1")
    # What a worker killed between storing files and committing leaves behind.
    stale = media_root / "analyses" / str(analysis.pk)
    stale.mkdir(parents=True)
    for kind in ("mask", "overlay", "gradcam", "seg_gradcam"):
        (stale / f"{kind}.png").write_bytes(b"half-written")
    artifacts = {
        kind: b"\x89PNG new" for kind in ("mask", "overlay", "gradcam", "seg_gradcam")
    }
    assert services.analysis_record_success(
        analysis_id=analysis.pk, result=model_result(), artifacts=artifacts
    )

    assert sorted(p.name for p in stale.iterdir()) == [
        "gradcam.png",
        "mask.png",
        "overlay.png",
        "seg_gradcam.png",
    ]
    assert (stale / "mask.png").read_bytes() == b"\x89PNG new"


def test_an_upload_succeeds_while_the_broker_is_down_and_the_row_waits_for_the_sweep(
    study, user, make_png, monkeypatch, django_capture_on_commit_callbacks, caplog
):
    def broker_down(analysis_id: int, *, countdown: float | None = None) -> None:
        raise ConnectionRefusedError("Error 111 connecting to 127.0.0.1:6379")

    monkeypatch.setattr("portal.analyses.queue.send_analysis", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        scan = scan_submit(
            study=study,
            upload=validate_content(filename="a.png", content=make_png()),
            uploaded_by=user,
            model_version=TEST_MODEL_VERSION,
        )

    assert scan.analyses.get().status == Status.QUEUED
    assert "the reconciler will send it" in caplog.text


def test_a_row_with_no_heartbeat_is_judged_by_its_start_against_the_time_limit(
    make_analysis, settings, enqueued
):
    # Claimed by a worker of a release before heartbeats.
    recent, old = make_analysis("a.png"), make_analysis("b.png")
    for analysis, age in ((recent, 10), (old, settings.ANALYSIS_TIME_LIMIT * 1.5)):
        services.analysis_claim(analysis_id=analysis.pk, worker="old-release:1")
        _age(analysis, heartbeat_at=None, started_at=_long_ago(age))
    enqueued.clear()

    assert reconcile(ids_in_broker=set()).requeued == [old.pk]


def test_a_worker_that_beats_again_keeps_its_row_even_after_it_was_found_silent(
    make_analysis, settings, enqueued
):
    analysis = make_analysis()
    services.analysis_claim(analysis_id=analysis.pk, worker="slow:1")
    found_silent_since = timezone.now() - timedelta(
        seconds=settings.ANALYSIS_STALE_RUNNING_SECONDS
    )
    # Its heartbeat lands between the sweep's query and its compare-and-set.
    services.analyses_heartbeat(worker="slow:1")

    assert not services.analysis_requeue(
        analysis_id=analysis.pk,
        error="lost",
        backoff=False,
        silent_since=found_silent_since,
    )
    analysis.refresh_from_db()
    assert analysis.status == Status.RUNNING
    assert analysis.attempts == 1
    assert enqueued == []


def test_the_dead_worker_sweep_alone_leaves_lost_messages_to_the_whole_sweep(
    make_analysis, settings, enqueued
):
    dead, _ = _dead_worker_and_lost_message(make_analysis, settings)
    enqueued.clear()

    assert rescue_dead_workers().requeued == [dead.pk]
    assert [pk for pk, _ in enqueued] == [dead.pk]

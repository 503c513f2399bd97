"""The site calibration fit runs in a real Celery worker on a real Redis: the page queues
it and polls it, the worker fits it; with the broker unreachable the fit is kept, failed
with the reason, and runs once an administrator runs it again."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings as django_settings
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from bench.launch import (
    database_url,
    point_celery_at,
    start_worker,
    stop_worker,
    tail,
    wait_until_ready,
)
from ml.site_calibration import MIN_READS_FOR_SITE_CALIBRATION
from portal.registry.models import SiteCalibration
from portal.review import calibration as site_calibration
from portal.review.models import CalibrationFit
from tests.portal.review.conftest import signed_analyses

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("calibration_model"),
]

WORKER_READY_S = 300
FIT_TIMEOUT_S = 180
UNREACHABLE_BROKER = "redis://127.0.0.1:1/4"


@pytest.fixture
def broker(settings: Any) -> Iterator[str]:
    """The test's Redis (REDIS_URL) and a queue of its own, so nothing else takes the
    message and a worker left over from another run consumes nothing of this one's."""
    url = django_settings.REDIS_URL
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError:
        pytest.skip(f"Redis is not reachable at {url}")
    queue = f"calibration-test-{uuid.uuid4().hex[:12]}"
    settings.CELERY_CALIBRATION_QUEUE = queue
    point_celery_at(url)
    yield url
    client = redis.Redis.from_url(url)
    client.delete(queue)
    client.close()


@pytest.fixture
def worker(
    broker: str, media_root: Path, tmp_path: Path, settings: Any
) -> Iterator[Any]:
    log_path = tmp_path / "worker.log"
    process = start_worker(
        database=database_url(connection.settings_dict),
        broker=broker,
        media_root=media_root,
        log_path=log_path,
        extra_env={"CELERY_CALIBRATION_QUEUE": settings.CELERY_CALIBRATION_QUEUE},
        name="calibration-fit",
        queues=[settings.CELERY_CALIBRATION_QUEUE],
    )
    try:
        wait_until_ready(process, log_path, WORKER_READY_S)
        yield log_path
    finally:
        stop_worker(process)
        connection.close()


def _wait_finished(client: Any, fit: CalibrationFit, log_path: Path) -> dict:
    """Poll the page's status URL, as the page's script does, until the fit is done."""
    url = reverse("review:calibration_fit_status", args=[fit.pk])
    deadline = time.monotonic() + FIT_TIMEOUT_S
    while time.monotonic() < deadline:
        status = client.get(url).json()
        if status["finished"]:
            return status
        time.sleep(0.5)
    raise AssertionError(f"fit {fit.pk} not finished:\n{tail(log_path)}")


def test_the_page_queues_the_fit_and_a_worker_runs_it(
    client, administrator, user, worker
):
    signed_analyses(user, n=MIN_READS_FOR_SITE_CALIBRATION + 10, signed=True)
    client.force_login(administrator)
    started = time.monotonic()
    response = client.post(reverse("review:calibration"), {"target_sensitivity": "0.9"})
    assert response.status_code == 302
    assert time.monotonic() - started < 10  # the request does not fit
    fit = CalibrationFit.objects.get()

    status = _wait_finished(client, fit, worker)

    calibration = SiteCalibration.objects.get()
    assert status["status"] == "succeeded", status
    assert status["calibration"] == calibration.pk
    assert calibration.created_by == administrator
    assert calibration.reads == MIN_READS_FOR_SITE_CALIBRATION + 10
    page = client.get(reverse("review:calibration")).content.decode()
    assert 'id="calibration-1"' in page
    assert f'<tr id="fit-{fit.pk}" data-status="succeeded">' in page


def test_a_fit_the_broker_did_not_take_is_kept_and_runs_when_run_again(
    client, administrator, user, worker, broker
):
    signed_analyses(user, n=MIN_READS_FOR_SITE_CALIBRATION + 10, signed=True)
    client.force_login(administrator)
    point_celery_at(UNREACHABLE_BROKER)
    try:
        client.post(reverse("review:calibration"), {"target_sensitivity": "0.9"})
    finally:
        point_celery_at(broker)
    fit = CalibrationFit.objects.get()
    assert fit.status == "failed"
    assert "could not be queued" in fit.error
    page = client.get(reverse("review:calibration")).content.decode()
    assert "could not be queued" in page and "Run again" in page
    assert not SiteCalibration.objects.exists()

    client.post(reverse("review:calibration_fit_retry", args=[fit.pk]))

    status = _wait_finished(client, fit, worker)
    assert status["status"] == "succeeded", status
    assert SiteCalibration.objects.get().pk == status["calibration"]


def _status_changes(fit: CalibrationFit) -> list[list[str]]:
    """The audit trail's record of the fit's status changes, oldest first."""
    from auditlog.models import LogEntry

    return [
        entry.changes_dict["status"]
        for entry in LogEntry.objects.get_for_object(fit).order_by("timestamp", "pk")
        if entry.action == LogEntry.Action.UPDATE and "status" in entry.changes_dict
    ]


def test_a_fit_is_claimed_once_and_a_passing_fault_leaves_it_to_run_again(
    administrator, user, settings
):
    """The services the task calls (its retry path needs a fault no test can cause on
    demand in a live worker): a duplicate message does nothing; a fault hands the row
    back to queued; out of retries, it is failed and may be run again. Every status
    change is in the audit trail."""
    fit = CalibrationFit.objects.create(
        model_version="test-model-1", target_sensitivity=0.9, requested_by=administrator
    )
    assert site_calibration.calibration_fit_claim(fit_id=fit.pk)
    assert not site_calibration.calibration_fit_claim(fit_id=fit.pk)
    assert site_calibration.calibration_fit_run(fit_id=fit.pk) is None

    assert site_calibration.calibration_fit_requeue(fit_id=fit.pk, error="db restart")
    fit.refresh_from_db()
    assert (fit.status, fit.attempts, fit.error) == ("queued", 1, "db restart")
    assert site_calibration.calibration_fit_claim(fit_id=fit.pk)
    assert site_calibration.calibration_fit_fail(fit_id=fit.pk, error="gave up")
    fit.refresh_from_db()
    assert fit.status == "failed"

    point_celery_at(UNREACHABLE_BROKER)
    try:
        site_calibration.calibration_fit_retry(fit=fit)
    finally:
        point_celery_at(django_settings.REDIS_URL)
    fit.refresh_from_db()
    # Sent on commit to a broker that is not there: failed again, still retryable.
    assert fit.status == "failed" and "could not be queued" in fit.error
    # A running fit whose worker was lost long ago may be run again; a live one not.
    CalibrationFit.objects.filter(pk=fit.pk).update(
        status="running", started_at=timezone.now()
    )
    fit.refresh_from_db()
    with pytest.raises(Exception, match="not failed"):
        site_calibration.calibration_fit_retry(fit=fit)
    settings.CALIBRATION_FIT_STALE_SECONDS = 0
    assert site_calibration.calibration_fit_claim(fit_id=fit.pk)

    assert _status_changes(fit) == [
        ["queued", "running"],  # claimed
        ["running", "queued"],  # handed back after a passing fault
        ["queued", "running"],
        ["running", "failed"],  # out of retries
        ["failed", "queued"],  # run again
        ["queued", "failed"],  # the broker did not take it
        # (made running by hand above, without the services: not audited)
    ]


def test_a_fault_after_the_fit_keeps_no_calibration_so_the_retry_fits_it_once(
    administrator, user
):
    """The database goes away as the fit's outcome is written: the task hands the row
    back and runs it again, which must not leave two calibrations of one fit."""
    from django.db import OperationalError

    signed_analyses(user, n=MIN_READS_FOR_SITE_CALIBRATION + 10, signed=True)
    fit = CalibrationFit.objects.create(
        model_version="test-model-1", target_sensitivity=0.9, requested_by=administrator
    )

    def drop_the_outcome(execute: Any, sql: str, params: Any, many: bool, context: Any):
        if sql.startswith('UPDATE "review_calibrationfit"') and (
            CalibrationFit.Status.SUCCEEDED in params
        ):
            raise OperationalError("server closed the connection unexpectedly")
        return execute(sql, params, many, context)

    with (
        connection.execute_wrapper(drop_the_outcome),
        pytest.raises(OperationalError),
    ):
        site_calibration.calibration_fit_run(fit_id=fit.pk)
    assert not SiteCalibration.objects.exists()

    assert site_calibration.calibration_fit_requeue(fit_id=fit.pk, error="retrying")
    fit = site_calibration.calibration_fit_run(fit_id=fit.pk)

    assert fit.status == "succeeded"
    assert list(SiteCalibration.objects.values_list("pk", "version")) == [
        (fit.calibration_id, 1)
    ]


def test_a_fit_claimed_again_after_its_worker_was_given_up_records_one_calibration(
    administrator, user, settings, monkeypatch
):
    """Worker A claims the fit and is slow; the fit goes stale, worker B claims it again
    and records its calibration. A, finishing later, must record nothing: its claim is
    no longer the fit's."""
    signed_analyses(user, n=MIN_READS_FOR_SITE_CALIBRATION + 10, signed=True)
    fit = CalibrationFit.objects.create(
        model_version="test-model-1", target_sensitivity=0.9, requested_by=administrator
    )
    settings.CALIBRATION_FIT_STALE_SECONDS = 0  # A's claim is stale at once
    evaluate = site_calibration.evaluate_site_calibration
    took_over: list[CalibrationFit | None] = []

    def slow_a(*args: Any, **kwargs: Any) -> Any:
        if not took_over:  # A, mid-fit: B takes the fit over and finishes it
            took_over.append(None)
            took_over[0] = site_calibration.calibration_fit_run(fit_id=fit.pk)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(site_calibration, "evaluate_site_calibration", slow_a)

    late = site_calibration.calibration_fit_run(fit_id=fit.pk)

    by_b = took_over[0]
    assert by_b is not None and by_b.status == "succeeded"
    assert list(SiteCalibration.objects.values_list("pk", "version", "job")) == [
        (by_b.calibration_id, 1, f"calibration-fit-{fit.pk}")
    ]
    assert late is None  # A's result is dropped
    fit.refresh_from_db()
    assert (fit.status, fit.calibration_id) == ("succeeded", by_b.calibration_id)


def test_a_job_records_one_calibration_whatever_races_to_record_it(administrator):
    """The calibration is keyed to its job in the database too."""
    from django.db import IntegrityError

    from portal.registry.services import site_calibration_create

    def record() -> SiteCalibration:
        return site_calibration_create(
            model_version="test-model-1",
            parameters={},
            evaluation={},
            target_sensitivity=0.9,
            reads=100,
            created_by=administrator,
            job="calibration-fit-7",
        )

    record()
    with pytest.raises(IntegrityError):
        record()
    assert SiteCalibration.objects.count() == 1


def test_a_run_given_up_for_lost_cannot_hand_back_a_fit_another_run_holds(
    administrator, user, settings, monkeypatch
):
    """Run A's fit goes stale and run B claims it; A then meets a passing fault. The
    task hands the fit back under A's own claim, so B's fit stays B's (not queued again
    beside it)."""
    from django.db import OperationalError

    from workers.tasks import fit_site_calibration

    signed_analyses(user, n=MIN_READS_FOR_SITE_CALIBRATION + 10, signed=True)
    fit = CalibrationFit.objects.create(
        model_version="test-model-1", target_sensitivity=0.9, requested_by=administrator
    )
    settings.CALIBRATION_FIT_STALE_SECONDS = 0  # A's claim is stale at once
    by_b: list[str | None] = []

    def b_takes_over_then_a_faults(*, fit_id: int, claim: str | None = None) -> None:
        by_b.append(site_calibration.calibration_fit_claim(fit_id=fit_id))
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(
        site_calibration, "calibration_fit_run", b_takes_over_then_a_faults
    )
    with pytest.raises(OperationalError):
        fit_site_calibration.run(fit.pk)

    fit.refresh_from_db()
    assert by_b[0] is not None
    assert (fit.status, fit.claim, fit.attempts) == ("running", by_b[0], 0)

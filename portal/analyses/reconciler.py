"""The reconciler: rescue analyses left behind by a dead worker or a lost broker message.

Every worker process runs it beside its tasks (workers/liveness.py): the dead-worker
part every ANALYSIS_HEARTBEAT_SECONDS, the whole sweep every RECONCILE_INTERVAL; and
`manage.py reconcile_analyses [--dry-run]` runs it on demand. Every change is a
compare-and-set update, so sweeps of several workers, a worker and a user pressing Retry
can race safely.

- A row *running* whose heartbeat (stamped every ANALYSIS_HEARTBEAT_SECONDS by the worker
  process that runs it, however long the analysis takes) is older than
  ANALYSIS_STALE_RUNNING_SECONDS has lost its process: it goes back to the queue with a
  new message, or fails once it has used ANALYSIS_MAX_ATTEMPTS. A row with no heartbeat
  at all (claimed by a worker of a release before heartbeats) is judged by its start,
  against 1.5 x the hard time limit, after which Celery has killed any task.
- A row *queued* for longer than ANALYSIS_STALE_QUEUED_SECONDS whose message is in
  neither the broker's queue nor its unacknowledged set lost that message (a Redis
  restart, a failed send): it is sent again, and that counts as an attempt, so a row
  whose messages keep vanishing fails with a reason instead of cycling forever. A row
  whose message is still waiting is left alone: a long queue is not a fault.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone

from portal.analyses import broker, queue, services
from portal.analyses.models import Analysis

logger = logging.getLogger(__name__)

Status = Analysis.Status
# Rows handled per sweep and kind; the next sweep takes the rest.
SWEEP_LIMIT = 1000
LOST_WORKER = (
    "the worker running it stopped without a result (no sign of life for {seconds} s)"
)
LOST_MESSAGE = "its queue message was lost (broker restarted?); sent again"


@dataclass
class Reconciliation:
    requeued: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    resent: list[int] = field(default_factory=list)
    # Stale queued rows whose message is still in the broker: waiting, not lost.
    waiting: list[int] = field(default_factory=list)
    broker_error: str = ""
    dry_run: bool = False

    def counts(self) -> dict[str, int]:
        return {
            "requeued": len(self.requeued),
            "failed": len(self.failed),
            "resent": len(self.resent),
        }


def reconcile(
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    ids_in_broker: set[int] | None = None,
) -> Reconciliation:
    """One sweep. `ids_in_broker` replaces the look at the broker (tests)."""
    now = now or timezone.now()
    result = Reconciliation(dry_run=dry_run)
    _rescue_running(result, now)
    _rescue_queued(result, now, ids_in_broker)
    if result.requeued or result.failed or result.resent:
        logger.info(
            "reconciler%s: requeued=%s failed=%s resent=%s",
            " (dry run)" if dry_run else "",
            result.requeued,
            result.failed,
            result.resent,
        )
    return result


def rescue_dead_workers(*, now: datetime | None = None) -> Reconciliation:
    """The dead-worker part of the sweep alone: cheap, one indexed query when idle."""
    result = Reconciliation()
    _rescue_running(result, now or timezone.now())
    return result


def _rescue_running(result: Reconciliation, now: datetime) -> None:
    seconds = settings.ANALYSIS_STALE_RUNNING_SECONDS
    silent_since = now - timedelta(seconds=seconds)
    without_heartbeat = timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT * 1.5)
    stale = Analysis.objects.filter(
        Q(heartbeat_at__lt=silent_since)
        | Q(heartbeat_at__isnull=True, started_at__lt=now - without_heartbeat),
        status=Status.RUNNING,
    ).values_list("pk", "attempts")[:SWEEP_LIMIT]
    for analysis_id, attempts in stale:
        if result.dry_run:
            lost = attempts >= settings.ANALYSIS_MAX_ATTEMPTS
            (result.failed if lost else result.requeued).append(analysis_id)
            continue
        try:
            requeued = services.analysis_requeue(
                analysis_id=analysis_id,
                error=LOST_WORKER.format(seconds=seconds),
                backoff=False,
                silent_since=silent_since,
            )
        except Exception as exc:
            # Requeued but not sent: the row waits as queued for the lost-message sweep.
            logger.warning(
                "reconciler: could not send analysis %s", analysis_id, exc_info=True
            )
            result.broker_error = f"{type(exc).__name__}: {exc}"
            result.requeued.append(analysis_id)
            return
        if requeued:
            logger.warning("analysis %s lost its worker; requeued", analysis_id)
            result.requeued.append(analysis_id)
        elif Analysis.objects.filter(pk=analysis_id, status=Status.FAILED).exists():
            logger.warning("analysis %s lost its worker; out of attempts", analysis_id)
            result.failed.append(analysis_id)


def _rescue_queued(
    result: Reconciliation, now: datetime, ids_in_broker: set[int] | None
) -> None:
    threshold = now - timedelta(seconds=settings.ANALYSIS_STALE_QUEUED_SECONDS)
    stale = list(
        Analysis.objects.filter(status=Status.QUEUED, queued_at__lt=threshold)
        .order_by("queued_at", "pk")
        .values_list("pk", "attempts")[:SWEEP_LIMIT]
    )
    if not stale:
        return
    if ids_in_broker is None:
        try:
            ids_in_broker = broker.analysis_ids_with_messages()
        except broker.BrokerUnavailable as exc:
            # Nothing can be sent now anyway; the next sweep tries again.
            result.broker_error = str(exc)
            logger.warning("reconciler: cannot read the broker: %s", exc)
            return
    max_attempts = settings.ANALYSIS_MAX_ATTEMPTS
    for analysis_id, attempts in stale:
        if analysis_id in ids_in_broker:
            result.waiting.append(analysis_id)
            continue
        if result.dry_run:
            (result.failed if attempts >= max_attempts else result.resent).append(
                analysis_id
            )
            continue
        row = Analysis.objects.filter(
            pk=analysis_id, status=Status.QUEUED, queued_at__lt=threshold
        )
        if attempts >= max_attempts:
            if row.update(
                status=Status.FAILED,
                finished_at=now,
                error=(
                    f"gave up after {max_attempts} attempts; last error: its queue "
                    "message was lost and no worker picked it up"
                ),
            ):
                logger.warning(
                    "analysis %s: message lost, out of attempts", analysis_id
                )
                result.failed.append(analysis_id)
            continue
        # queued_at moves on so that the next sweep waits again before another resend.
        if row.update(queued_at=now, attempts=F("attempts") + 1, error=LOST_MESSAGE):
            logger.warning("analysis %s: message lost; sent again", analysis_id)
            result.resent.append(analysis_id)
            if not _send(result, analysis_id):
                return


def _send(result: Reconciliation, analysis_id: int) -> bool:
    """Send the message; False (and the sweep stops) when the broker refuses it."""
    try:
        queue.send_analysis(analysis_id)
    except Exception as exc:
        # The row is queued without a message: a later sweep finds it again.
        logger.warning(
            "reconciler: could not send analysis %s", analysis_id, exc_info=True
        )
        result.broker_error = f"{type(exc).__name__}: {exc}"
        return False
    return True

"""The heartbeat thread's tick: stamps this process's rows, then rescues dead workers'
rows, but only once its own heartbeats have gone through for a whole stale period."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from portal.analyses import services
from portal.analyses.models import Analysis
from portal.analyses.services import scan_submit
from portal.clinical.uploads import validate_content
from workers import liveness

pytestmark = pytest.mark.django_db
Status = Analysis.Status


@pytest.fixture
def claimed(study: Any, user: Any, make_png: Any) -> Any:
    def claim(name: str, worker: str) -> Analysis:
        scan = scan_submit(
            study=study,
            upload=validate_content(filename=name, content=make_png()),
            uploaded_by=user,
            model_version="test-model-1",
        )
        analysis = scan.analyses.get()
        assert services.analysis_claim(analysis_id=analysis.pk, worker=worker)
        return analysis

    return claim


def _silent(analysis: Analysis, seconds: float) -> None:
    Analysis.objects.filter(pk=analysis.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=seconds)
    )


def test_a_tick_stamps_the_rows_this_process_runs_and_no_others(claimed, settings):
    mine = claimed("a.png", liveness.worker_name())
    other = claimed("b.png", "elsewhere@host:1")
    for analysis in (mine, other):
        _silent(analysis, 30)

    liveness.Beats(started=0.0).tick(0.0)

    mine.refresh_from_db()
    other.refresh_from_db()
    assert timezone.now() - mine.heartbeat_at < timedelta(seconds=5)
    assert timezone.now() - other.heartbeat_at > timedelta(seconds=25)


def test_dead_workers_rows_are_rescued_only_after_a_healthy_stale_period(
    claimed, settings, enqueued
):
    stale = settings.ANALYSIS_STALE_RUNNING_SECONDS
    dead = claimed("a.png", "dead@host:1")
    _silent(dead, stale + 5)
    enqueued.clear()
    beats = liveness.Beats(started=0.0)

    beats.tick(0.0)
    beats.tick(stale - 1.0)
    assert Analysis.objects.get(pk=dead.pk).status == Status.RUNNING

    beats.tick(float(stale))
    assert Analysis.objects.get(pk=dead.pk).status == Status.QUEUED
    assert [pk for pk, _ in enqueued] == [dead.pk]


def test_a_failed_heartbeat_restarts_the_healthy_period(
    claimed, settings, enqueued, monkeypatch
):
    stale = settings.ANALYSIS_STALE_RUNNING_SECONDS
    dead = claimed("a.png", "dead@host:1")
    _silent(dead, stale + 5)
    beats = liveness.Beats(started=0.0)
    beats.tick(0.0)

    def database_away(**_: Any) -> int:
        raise ConnectionError("database away")

    with monkeypatch.context() as patched:
        patched.setattr(services, "analyses_heartbeat", database_away)
        beats.tick(float(stale))
    beats.tick(stale + 1.0)

    assert Analysis.objects.get(pk=dead.pk).status == Status.RUNNING

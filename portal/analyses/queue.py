"""The job protocol's sending side: the one Celery app, the task names, and the send.

The portal sends work by task name and never imports `workers` (which loads TensorFlow
and the task code): a message only says "run analysis 42". The workers run their tasks
on this same app, so both sides share one configuration (every CELERY_* setting) and one
connection pool per process.
"""

from __future__ import annotations

from celery import Celery
from django.conf import settings

ANALYZE_SCAN = "workers.tasks.analyze_scan"

# `include` names the module a worker imports for its tasks; the portal never does.
app = Celery("workers", include=["workers.tasks"])
app.config_from_object("django.conf:settings", namespace="CELERY")


def send_analysis(analysis_id: int, *, countdown: float | None = None) -> None:
    """Send one analyze_scan message; raises when the broker cannot be reached.

    The queue is read from the settings at each send so that a process can move its
    work to another queue by changing the setting (the end-to-end tests do).
    """
    app.send_task(
        ANALYZE_SCAN,
        args=[analysis_id],
        countdown=countdown,
        queue=settings.CELERY_INFERENCE_QUEUE,
    )

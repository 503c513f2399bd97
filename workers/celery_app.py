from __future__ import annotations

import os
from typing import Any

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = Celery("workers", include=["workers.tasks"])
# Every setting comes from portal.settings (CELERY_* names): one place reads the environment.
app.config_from_object("django.conf:settings", namespace="CELERY")


def inference_task(**options: Any) -> Any:
    """The decorator for long tasks: a killed worker's message is delivered again.

    Ack after the work (acks_late) and requeue when the worker process dies
    (reject_on_worker_lost); the task itself must be idempotent.
    """
    options.setdefault("acks_late", True)
    options.setdefault("reject_on_worker_lost", True)
    options.setdefault("ignore_result", True)
    return app.task(**options)

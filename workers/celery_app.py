from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

# One app for both sides of the queue: the portal sends on it, the workers run tasks on it.
from portal.analyses.queue import app

# Imported with the app, before a worker starts: it learns the worker's node name then.
from workers import liveness  # noqa: F401

__all__ = ["app", "inference_task"]


def inference_task(**options: Any) -> Any:
    """The decorator for long tasks: a killed worker's message is delivered again.

    Ack after the work (acks_late) and requeue when the worker process dies
    (reject_on_worker_lost); the task itself must be idempotent.
    """
    options.setdefault("acks_late", True)
    options.setdefault("reject_on_worker_lost", True)
    options.setdefault("ignore_result", True)
    return app.task(**options)

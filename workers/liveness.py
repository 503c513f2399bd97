"""Proof of life for running analyses, and the sweep that rescues a dead worker's rows.

Each worker pool process runs one daemon thread beside its tasks (started at
worker_process_init, never inside a task): every ANALYSIS_HEARTBEAT_SECONDS it stamps
`heartbeat_at` on the rows this process is running, whatever the task is doing
(TensorFlow releases the GIL, so a long batch keeps beating: a slow analysis is not a
dead one). A row whose heartbeat is older than ANALYSIS_STALE_RUNNING_SECONDS has lost
its process, and the same thread, in any live worker, requeues it at once. Every
RECONCILE_INTERVAL it runs the whole reconciler (lost messages too), so recovery needs
no Celery beat: `make run`, one worker, sweeps as production does.

Rows carry the process's name, "<node name>:<pid>", so a heartbeat touches only its own.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from celery.signals import celeryd_init
from django.conf import settings
from django.db import connections

logger = logging.getLogger(__name__)

# The worker's node name ("victim@host"), known in the parent before the pool forks.
_node_name = os.uname().nodename
_thread: threading.Thread | None = None


@celeryd_init.connect
def _remember_node_name(sender: str | None = None, **_: Any) -> None:
    global _node_name
    if sender:
        _node_name = sender


def worker_name() -> str:
    """This process's name on the rows it claims."""
    return f"{_node_name}:{os.getpid()}"


def start(**_: Any) -> None:
    """worker_process_init handler: start this process's heartbeat thread."""
    global _thread
    if _thread is not None and _thread.is_alive():
        return
    _thread = threading.Thread(target=_run, name="heartbeat", daemon=True)
    _thread.start()


def _run() -> None:
    beats = Beats(started=time.monotonic())
    while True:
        try:
            beats.tick(time.monotonic())
        finally:
            # This thread's connection is closed between beats: nothing held while idle.
            connections.close_all()
        time.sleep(settings.ANALYSIS_HEARTBEAT_SECONDS)


class Beats:
    """What one heartbeat thread does at each tick, and when it may judge others dead.

    Another worker's silence proves its death only if this process could have seen its
    heartbeats: after a database outage every worker looks silent for a while. So this
    process rescues rows only once its own heartbeats have gone through for a whole
    ANALYSIS_STALE_RUNNING_SECONDS, time enough for every live worker to stamp again.
    """

    def __init__(self, *, started: float) -> None:
        self.healthy_since: float | None = None
        self.next_full_sweep = started

    def tick(self, now: float) -> None:
        from portal.analyses import reconciler, services

        try:
            services.analyses_heartbeat(worker=worker_name())
        except Exception:
            logger.warning(
                "heartbeat failed; rescuing nothing until it works", exc_info=True
            )
            self.healthy_since = None
            return
        if self.healthy_since is None:
            self.healthy_since = now
        if now - self.healthy_since < settings.ANALYSIS_STALE_RUNNING_SECONDS:
            return
        try:
            if now >= self.next_full_sweep:
                self.next_full_sweep = now + settings.RECONCILE_INTERVAL
                reconciler.reconcile()
            else:
                reconciler.rescue_dead_workers()
        except Exception:
            # The next tick sweeps again.
            logger.warning("reconciler sweep failed", exc_info=True)

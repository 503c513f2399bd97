"""Redis stopped and restarted while a batch is queued. It keeps nothing on disk, so every
waiting message is lost: the reconciler (run by the worker) finds the rows and sends them again."""

from __future__ import annotations

import time

import pytest

from tests.faults.harness import (
    all_finished,
    assert_each_finished_once,
    wait_for_first_result,
    wait_until,
)

pytestmark = pytest.mark.slow
N = 16
TIMEOUT = 300


def test_a_redis_restart_mid_batch_loses_no_analysis(make_stack):
    stack = make_stack()
    stack.start_worker("worker")
    stack.wait_ready("worker")
    ids = stack.driver("create", str(N), "512")
    wait_for_first_result(stack, TIMEOUT)

    stack.redis.stop()
    # Uploads go on while the broker is down: stored and queued, sent later.
    during = stack.driver("create", "3", "256")
    assert stack.driver("health")["broker"] == "unreachable"
    time.sleep(3)
    stack.redis.start()

    analyses = wait_until(
        lambda: all_finished(stack), timeout=TIMEOUT, interval=1, what="every result"
    )
    assert [a["id"] for a in analyses] == ids + during
    assert_each_finished_once(stack, analyses)
    assert stack.driver("health")["status"] == "ok"

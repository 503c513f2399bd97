"""PostgreSQL restarted during a batch: workers and portal recover without manual steps.

Runs a private PostgreSQL cluster (initdb as the postgres user, its own port), never the
machine's shared one. `make faults` runs it (RUN_LONG_FAULTS=1).
"""

from __future__ import annotations

import time

import pytest

from tests.faults.harness import (
    all_finished,
    assert_each_finished_once,
    wait_for_first_result,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.long_fault]
N = 16
TIMEOUT = 420


@pytest.mark.parametrize("outage_s", [0, 8])
def test_a_postgres_restart_mid_batch_needs_no_manual_step(make_stack, outage_s):
    stack = make_stack(database="postgres")
    stack.start_worker("worker")
    stack.wait_ready("worker")
    ids = stack.driver("create", str(N), "512")
    wait_for_first_result(stack, TIMEOUT)

    cluster = stack.postgres
    if outage_s:
        cluster.stop()
        time.sleep(outage_s)
        cluster.start()
    else:
        cluster.restart()

    analyses = wait_until(
        lambda: all_finished(stack), timeout=TIMEOUT, interval=2, what="every result"
    )
    assert [a["id"] for a in analyses] == ids
    assert_each_finished_once(stack, analyses)
    # The portal side reconnects by itself too.
    assert stack.driver("health")["database"] == "ok"
    more = stack.driver("create", "2", "128")
    wait_until(
        lambda: all(
            a["status"] == "succeeded"
            for a in stack.driver("status")
            if a["id"] in more
        ),
        timeout=TIMEOUT,
        what="analyses uploaded after the restart",
    )
    assert stack.processes["worker"].poll() is None

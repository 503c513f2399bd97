"""kill -9 of a worker in the middle of analyses: every analysis still finishes once."""

from __future__ import annotations

import pytest

from tests.faults.harness import (
    all_finished,
    assert_each_finished_once,
    running_on,
    wait_until,
)

pytestmark = pytest.mark.slow
N = 10
TIMEOUT = 300


@pytest.mark.parametrize("target", ["whole worker", "pool process"])
def test_a_worker_killed_mid_batch_loses_nothing_and_duplicates_nothing(
    make_stack, target
):
    stack = make_stack()
    stack.start_worker("victim")
    stack.wait_ready("victim")
    stack.start_worker("survivor")
    stack.wait_ready("survivor")
    # Large scans: drawing and storing results takes long enough to be caught mid-way.
    ids = stack.driver("create", str(N), "1024")

    def victim_holds_work() -> list[dict]:
        return running_on(stack, "victim")

    wait_until(victim_holds_work, timeout=TIMEOUT, interval=0.1, what="a claim")
    if target == "whole worker":
        stack.kill("victim")
    else:
        # Celery requeues the task (reject_on_worker_lost) and starts a new pool process.
        dead_pid = stack.kill_pool_process("victim")
    # What the dead process held when it died: nobody else can change these rows now,
    # until the reconciler finds them (a worker's name ends with its process id).
    held = victim_holds_work()
    if target == "pool process":
        held = [a for a in held if a["worker"].endswith(f":{dead_pid}")]
    assert held, "the victim finished its work before it was killed"

    analyses = wait_until(
        lambda: all_finished(stack), timeout=TIMEOUT, interval=1, what="every result"
    )
    assert [a["id"] for a in analyses] == ids
    assert_each_finished_once(stack, analyses)
    by_id = {a["id"]: a for a in analyses}
    for orphan in held:
        # Claimed by the dead process, then rescued by the reconciler and run again
        # (by the survivor, or by the victim's new pool process).
        assert by_id[orphan["id"]]["attempts"] == 2
        if target == "whole worker":
            assert by_id[orphan["id"]]["worker"].startswith("survivor@")

"""kill -9 of a worker in the middle of analyses: every analysis still finishes once."""

from __future__ import annotations

import pytest

from tests.faults.harness import assert_each_finished_once, wait_until

pytestmark = pytest.mark.slow
N = 10
TIMEOUT = 300


def test_a_worker_killed_mid_batch_loses_nothing_and_duplicates_nothing(make_stack):
    stack = make_stack()
    stack.start_beat()
    stack.start_worker("victim")
    stack.wait_ready("victim")
    stack.start_worker("survivor")
    stack.wait_ready("survivor")
    # Large scans: drawing and storing results takes long enough to be caught mid-way.
    ids = stack.driver("create", str(N), "1024")

    def victim_holds_work() -> list[dict]:
        return [
            a
            for a in stack.driver("status")
            if a["status"] == "running" and a["worker"].startswith("victim@")
        ]

    held = wait_until(victim_holds_work, timeout=TIMEOUT, interval=0.1, what="a claim")
    stack.kill("victim")

    def all_finished() -> list[dict] | None:
        analyses = stack.driver("status")
        done = all(a["status"] in ("succeeded", "failed") for a in analyses)
        return analyses if done else None

    analyses = wait_until(
        all_finished, timeout=TIMEOUT, interval=1, what="every result"
    )
    assert [a["id"] for a in analyses] == ids
    assert_each_finished_once(stack, analyses)
    by_id = {a["id"]: a for a in analyses}
    for orphan in held:
        # Claimed by the dead worker, then rescued by the reconciler and run again.
        assert by_id[orphan["id"]]["worker"].startswith("survivor@")
        assert by_id[orphan["id"]]["attempts"] == 2

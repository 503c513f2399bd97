"""A worker whose model files are missing or corrupt fails its analyses with a clear
reason, stays up, and does not take the good workers down."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.faults.harness import all_finished, wait_until

pytestmark = pytest.mark.slow
N = 12
TIMEOUT = 300


def _corrupt_copy(weights: Path, target: Path) -> Path:
    shutil.copytree(weights, target)
    data = bytearray((target / "weights.npz").read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = b"\0" * 4096
    (target / "weights.npz").write_bytes(bytes(data))
    return target


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_a_broken_worker_fails_with_a_reason_and_good_workers_carry_on(
    make_stack, tmp_path, tiny_weights, damage
):
    stack = make_stack()
    if damage == "missing":
        broken_dir = tmp_path / "no-weights-here"
        expected = ("model could not be loaded", str(broken_dir))
    else:
        broken_dir = _corrupt_copy(tiny_weights, tmp_path / "corrupt-weights")
        expected = ("model could not be loaded", "weights.npz")
    broken = stack.start_worker("broken", ML_WEIGHTS_DIR=str(broken_dir))
    stack.wait_ready("broken")
    # The broken worker alone first, so that it certainly takes some analyses.
    first = stack.driver("create", "3", "128")
    wait_until(
        lambda: all(a["status"] == "failed" for a in stack.driver("status")),
        timeout=TIMEOUT,
        interval=0.5,
        what="the broken worker to fail its analyses",
    )
    good = stack.start_worker("good")
    stack.wait_ready("good")
    later = stack.driver("create", str(N), "128")

    analyses = wait_until(
        lambda: all_finished(stack), timeout=TIMEOUT, interval=1, what="every result"
    )
    by_id = {a["id"]: a for a in analyses}

    for analysis_id in first:
        error = by_id[analysis_id]["error"]
        for fragment in expected:
            assert fragment in error, error
    failed_later = [by_id[i] for i in later if by_id[i]["status"] == "failed"]
    assert all(a["worker"].startswith("broken@") for a in failed_later)
    succeeded = [by_id[i] for i in later if by_id[i]["status"] == "succeeded"]
    assert succeeded, stack.logs()
    assert all(a["worker"].startswith("good@") for a in succeeded)
    # Neither worker died: the broken one keeps answering (and failing) instead of
    # crash-looping, the good one is unaffected.
    assert good.poll() is None, stack.tail("good")
    assert broken.poll() is None, stack.tail("broken")
    # A failed analysis can be retried once the model is fixed: the reason says so.
    assert all(a["artifacts"] == [] for a in failed_later)

"""The ingestion benchmark's pieces, and one small run against a real web process."""

from __future__ import annotations

import hashlib
import io

import pytest
from PIL import Image

from bench.cli import main
from bench.ingest import unique_png, wait_measuring_peak
from tests.conftest import SCANS_DIR
from tests.e2e.conftest import redis_reachable
from tests.portal.ingest.factories import png


def test_unique_png_keeps_the_pixels_and_changes_the_digest():
    original = png(value=3)
    first, second = unique_png(original, "a"), unique_png(original, "b")
    digests = {hashlib.sha256(c).hexdigest() for c in (original, first, second)}
    assert len(digests) == 3
    for content in (first, second):
        image = Image.open(io.BytesIO(content))
        image.load()
        assert image.tobytes() == Image.open(io.BytesIO(original)).tobytes()


def test_a_child_s_peak_memory_is_its_own_not_the_benchmark_s():
    """The benchmark process holds 400 MB when it starts the child (as after POSTing a
    large zip); the child itself stays small. wait4's ru_maxrss reported the parent's
    high-water mark for such a child (Linux keeps it across exec)."""
    import subprocess
    import sys

    held = bytearray(400 * 1024 * 1024)
    held[::4096] = b"x" * len(held[::4096])  # touch every page: resident
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; b = bytearray(60 * 2**20); time.sleep(0.5)",
        ]
    )
    returncode, peak_mb = wait_measuring_peak(child)
    assert returncode == 0
    assert 60 <= peak_mb < 200
    del held


@pytest.mark.slow
def test_a_small_benchmark_run_reports_both_figures(settings, capsys):
    if not redis_reachable(settings.REDIS_URL):
        pytest.skip(f"Redis is not reachable at {settings.REDIS_URL}")
    # The scans kept with the tests lay out their classes like BUSI's folders.
    assert main(["ingest", "--n", "6", "--busi-dir", str(SCANS_DIR)]) == 0
    out = capsys.readouterr().out
    assert "accepted 6, rejected 0, messages in the queue 6" in out
    assert "accepted and enqueued in" in out and "growth" in out


@pytest.mark.slow
def test_the_scale_run_reports_both_ways_in_at_each_size(settings, capsys):
    if not redis_reachable(settings.REDIS_URL):
        pytest.skip(f"Redis is not reachable at {settings.REDIS_URL}")
    sizes = "2,4"
    assert main(["ingest", "--scale", sizes, "--busi-dir", str(SCANS_DIR)]) == 0
    out = capsys.readouterr().out
    assert "API 2/2, import 2" in out and "API 4/4, import 4" in out
    assert "API: per-file time at 4 is" in out
    assert "import_scans: per-file time at 4 is" in out and "peak memory" in out

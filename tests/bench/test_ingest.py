"""The ingestion benchmark's pieces, and one small run against a real web process."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from PIL import Image

from bench.cli import main
from bench.ingest import unique_png
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


@pytest.mark.slow
def test_a_small_benchmark_run_reports_both_figures(settings, capsys):
    busi = Path(settings.BUSI_DIR)
    if not (busi / "benign").is_dir():
        pytest.skip(f"BUSI dataset not found at {busi} (set BUSI_DIR)")
    if not redis_reachable(settings.REDIS_URL):
        pytest.skip(f"Redis is not reachable at {settings.REDIS_URL}")
    assert main(["ingest", "--n", "6"]) == 0
    out = capsys.readouterr().out
    assert "accepted 6, rejected 0, messages in the queue 6" in out
    assert "accepted and enqueued in" in out and "growth" in out

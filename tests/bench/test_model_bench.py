"""``python -m bench ml`` reports the whole analysis per image and the load it ran under."""

from __future__ import annotations

import pytest

from bench import model


def test_bench_ml_reports_stages_and_the_load_it_ran_under(monkeypatch, tmp_path):
    from ml.config import busi_dir

    if not (busi_dir() / "MANIFEST.csv").is_file():
        pytest.skip("BUSI not found")
    # The prototype (EfficientNetB7 at 600 px) is timed elsewhere; not what this checks.
    monkeypatch.setattr(model, "time_prototype", lambda batch, repeats: [1.0])
    report = model.run(busi_dir(), None, images=8, repeats=1)
    for stage in ("decode", "model", "encode"):
        assert report[f"  of which {stage}_ms"] > 0
    assert report["full_analysis_batch8_ms_per_image"] >= report["  of which model_ms"]
    # The committed weights carry a gate: its cost is timed apart, wall and CPU.
    assert report["  gate alone (inside model), wall_ms"] > 0
    assert report["  gate alone (inside model), cpu_ms"] > 0
    before, after = report["load_average_1min_before_after"].split(" / ")
    assert float(before) >= 0 and float(after) >= 0

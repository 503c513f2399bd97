from __future__ import annotations

import csv

import numpy as np
import pytest

from ml.inference import Analyzer
from ml.training.train import TrainConfig, train


@pytest.mark.parametrize("class_head", ["global", "lesion"])
def test_one_epoch_on_a_handful_of_images_writes_loadable_weights(
    all_sources, imagenet_npz, tmp_path, class_head
):
    config = TrainConfig(
        out_dir=tmp_path / "weights",
        image_size=128,
        class_head=class_head,
        epochs=1,
        frozen_epochs=0,
        batch_size=4,
        limit=4,
        cache_dir=None,
    )
    result = train(config)

    with (tmp_path / "weights" / "training_log.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1 and float(rows[0]["loss"]) > 0
    analyzer = Analyzer.load(tmp_path / "weights")
    # Calibration and out-of-distribution statistics travel inside the versioned archive.
    assert analyzer.temperature > 0 and analyzer.class_bias.shape == (3,)
    assert analyzer.class_bias[1] == 0.0
    assert analyzer.ood is not None and np.isfinite(analyzer.ood.threshold)
    assert analyzer.model_version == result["version"]
    assert analyzer.meta.class_head == class_head  # the network is rebuilt as trained
    assert analyzer.meta.training["sources"] == list(all_sources)
    (analysis,) = analyzer.analyze([np.full((100, 150, 3), 90, np.uint8)])
    assert analysis.lesion_mask.shape == (100, 150)
    assert isinstance(analysis.in_distribution, bool)
    assert analysis.explained_class == analysis.label

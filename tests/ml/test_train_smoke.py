from __future__ import annotations

import csv

import numpy as np
import pytest

from ml.inference import Analyzer
from ml.training.train import TrainConfig, train


@pytest.mark.parametrize(
    ("class_head", "backbone"),
    [("global", "lite0"), ("lesion", "lite0"), ("global", "lite2")],
)
def test_one_epoch_on_a_handful_of_images_writes_loadable_weights(
    request, all_sources, tmp_path, class_head, backbone
):
    request.getfixturevalue(
        "imagenet_npz" if backbone == "lite0" else "imagenet_npz_lite2"
    )
    config = TrainConfig(
        out_dir=tmp_path / "weights",
        image_size=128,
        class_head=class_head,
        backbone=backbone,
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
    # The network is rebuilt as trained, and named by its encoder.
    assert analyzer.meta.class_head == class_head
    assert analyzer.meta.backbone == backbone
    assert analyzer.model_version.startswith(f"busnet-{backbone}-")
    assert analyzer.meta.training["sources"] == list(all_sources)
    (analysis,) = analyzer.analyze([np.full((100, 150, 3), 90, np.uint8)])
    assert analysis.lesion_mask.shape == (100, 150)
    assert isinstance(analysis.in_distribution, bool)
    assert analysis.explained_class == analysis.label


def test_weight_averaging_keeps_the_mean_as_the_model_and_the_best_epoch_beside_it(
    all_sources, imagenet_npz, tmp_path
):
    config = TrainConfig(
        out_dir=tmp_path / "weights",
        image_size=128,
        epochs=2,
        frozen_epochs=0,
        batch_size=4,
        limit=4,
        cache_dir=None,
        average_from=1,
    )
    result = train(config)

    averaged = Analyzer.load(tmp_path / "weights")
    best = Analyzer.load(tmp_path / "weights" / "best-epoch")
    record = averaged.meta.training["weight_average"]
    assert record["epochs"] == [1, 2]
    assert record["best_epoch_model"] == best.model_version != result["version"]
    assert np.isfinite(record["val_score"])
    # Each is calibrated and has its own out-of-distribution statistics.
    assert best.ood is not None and averaged.ood is not None
    assert "weight_average" not in best.meta.training
    different = [
        not np.allclose(a, b)
        for a, b in zip(
            averaged._model.get_weights(), best._model.get_weights(), strict=True
        )
    ]
    assert any(different)


def test_the_running_mean_of_one_epoch_is_that_epochs_weights(
    all_sources, imagenet_npz, tmp_path
):
    from ml.model import build_busnet
    from ml.training.arrays import load_split_arrays
    from ml.training.fit import FitConfig, fit
    from ml.training.train import _limited

    sources = list(all_sources)
    train_set = _limited(load_split_arrays(sources, "train", 128, None), 2)
    val_set = _limited(load_split_arrays(sources, "val", 128, None), 2)
    model = build_busnet(128)
    fitted = fit(
        model,
        train_set,
        val_set,
        FitConfig(
            image_size=128,
            epochs=2,
            frozen_epochs=0,
            batch_size=4,
            learning_rate=1e-3,
            head_learning_rate=1e-3,
            weight_decay=0.0,
            seg_loss_weight=1.0,
            label_smoothing=0.0,
            patience=8,
            seed=0,
            augment=False,
            select_best=False,  # the model ends with the last epoch's weights
            average_from=2,
        ),
        tmp_path / "log.csv",
    )
    assert fitted["averaged_epochs"] == [2]
    for mean, last in zip(fitted["averaged"], model.get_weights(), strict=True):
        np.testing.assert_allclose(mean, last, rtol=1e-6)

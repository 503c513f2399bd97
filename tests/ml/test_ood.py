from __future__ import annotations

import numpy as np
import pytest

from ml import ood
from ml.config import DEFAULT_WEIGHTS_DIR
from ml.training.ood_corpus import corpus


def test_the_threshold_keeps_the_chosen_share_of_validation_features():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(600, 16))
    val = rng.normal(size=(400, 16))
    model = ood.fit(train, val, keep=0.95)
    kept = model.in_distribution(model.score(val)).mean()
    assert kept == pytest.approx(0.95, abs=0.01)


def test_features_far_from_the_training_ones_are_flagged():
    rng = np.random.default_rng(1)
    train = rng.normal(size=(600, 16))
    model = ood.fit(train, rng.normal(size=(300, 16)))
    near = rng.normal(size=(200, 16))
    shifted = rng.normal(size=(200, 16)) + 3.0
    assert model.in_distribution(model.score(near)).mean() > 0.9
    assert not model.in_distribution(model.score(shifted)).any()


def test_a_shift_in_a_small_early_depth_is_not_drowned_by_a_large_late_one():
    rng = np.random.default_rng(4)
    sizes = [4, 256]  # e.g. a texture block and the class layer
    train = rng.normal(size=(1500, 260))
    model = ood.fit(train, rng.normal(size=(500, 260)), sizes)
    texture_changed = rng.normal(size=(100, 260))
    texture_changed[:, :4] += 4.0
    assert not model.in_distribution(model.score(texture_changed)).any()
    assert model.in_distribution(model.score(rng.normal(size=(100, 260)))).mean() > 0.9


def test_block_sizes_must_cover_the_features():
    with pytest.raises(ValueError, match="do not add up"):
        ood.fit(np.zeros((10, 5)), np.zeros((5, 5)), [2, 2])


def test_a_constant_feature_does_not_break_the_fit():
    rng = np.random.default_rng(2)
    train = rng.normal(size=(100, 8))
    train[:, 3] = 1.0  # a dead channel: a singular covariance without shrinkage
    model = ood.fit(train, train[:50])
    assert np.isfinite(model.score(train)).all()


def test_the_statistics_round_trip_through_arrays():
    rng = np.random.default_rng(3)
    model = ood.fit(rng.normal(size=(200, 8)), rng.normal(size=(50, 8)))
    again = ood.OodModel.from_arrays(model.to_arrays())
    points = rng.normal(size=(10, 8))
    np.testing.assert_allclose(again.score(points), model.score(points), rtol=1e-5)
    assert again.threshold == model.threshold
    assert ood.OodModel.from_arrays({}) is None


def test_the_generated_corpus_is_large_and_varied():
    images = corpus(include_skimage=False)
    assert len(images) >= 18
    for name, pixels in images.items():
        assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3, (
            name
        )


@pytest.fixture(scope="module")
def analyzer():
    from ml.inference import Analyzer

    return Analyzer.load(DEFAULT_WEIGHTS_DIR)


@pytest.mark.parametrize(
    "name",
    ["blank_black", "uniform_noise", "document_1", "screenshot_1", "chest_xray_like_1"],
)
def test_the_committed_model_flags_images_that_are_not_ultrasound(analyzer, name):
    (result,) = analyzer.analyze([corpus(include_skimage=False)[name]])
    assert result.in_distribution is False
    assert result.ood_score > analyzer.ood.threshold


def test_the_committed_model_passes_real_scans(analyzer, all_sources):
    from ml.training.sources import load_image, read_manifest
    from ml.training.splits import load_split

    images = []
    for source, root in all_sources.items():
        records = {r.path: r for r in read_manifest(source, root)}
        images += [load_image(root, records[p]) for p in load_split(source)["test"][:6]]
    results = analyzer.analyze(images)
    assert sum(r.in_distribution for r in results) >= len(results) - 1

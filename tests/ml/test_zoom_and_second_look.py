"""Square crops around a lesion and pasting back (ml.zoom); the second look's measurement
(ml.training.second_look), without the network."""

from __future__ import annotations

import numpy as np
import pytest

from ml.metrics import BENIGN, MALIGNANT, NORMAL
from ml.training.second_look import merge, summarise
from ml.zoom import crop_extent, paste, square_crop


def test_square_crop_centres_the_box_with_its_margin_and_pads_outside_the_scan():
    image = np.zeros((100, 200, 3), np.uint8)
    image[40:60, 90:110] = 255  # a 20 x 20 "lesion"
    crop = square_crop(image, (90, 40, 110, 60), margin=0.5, side=40)
    # 20 px box + 10 px each side = 40 px: the lesion fills the middle half.
    assert crop.shape == (40, 40, 3)
    assert crop[10:30, 10:30].min() == 255
    assert crop[:8].max() == 0 and crop[32:].max() == 0

    corner = np.full((100, 100, 3), 200, np.uint8)
    crop = square_crop(corner, (0, 0, 40, 40), margin=0.5, side=80)
    # The square runs 20 px off the top and left: zero there, the scan elsewhere.
    assert crop[:15, :15].max() == 0
    assert crop[25:, 25:].min() == 200

    with pytest.raises(ValueError, match="empty box"):
        square_crop(image, (5, 5, 5, 9), margin=0.1, side=32)


@pytest.mark.parametrize(
    "box", [(90, 40, 110, 60), (0, 0, 40, 30), (170, 70, 200, 100)]
)
def test_a_crop_pasted_back_lands_where_it_was_taken(box):
    """The crop of a mask, pasted over an empty mask, gives back the mask inside the crop
    (boxes in the middle and against the scan's edges, where the crop is padded)."""
    rng = np.random.default_rng(0)
    mask = rng.random((100, 200)) > 0.5
    extent = crop_extent(box, 0.25)
    crop = square_crop(
        np.repeat(mask[..., None].astype(np.uint8) * 255, 3, axis=2),
        box,
        0.25,
        extent,
    )[..., 0]
    assert crop.shape == (extent, extent)
    pasted = paste(np.zeros_like(mask), crop > 127, box)
    x0, y0, x1, y1 = box
    assert np.array_equal(pasted[y0:y1, x0:x1], mask[y0:y1, x0:x1])
    assert pasted.sum() <= mask.sum()


def _scored(first, second, labels):
    n = len(labels)
    return {
        "labels": np.asarray(labels),
        "groups": np.arange(n).astype(str),
        "logits": np.asarray(first, float),
        "dice": np.full(n, 0.5),
        "has_box": np.ones(n, bool),
        "second": np.asarray([second], float),
        "dice2": np.full((1, n), 0.75),
        "margins": np.asarray([0.25]),
        "sources": np.asarray(["a"] * n),
    }


def test_both_passes_are_averaged_in_logits_and_dice_is_the_pasted_outlines():
    labels = [NORMAL, BENIGN, MALIGNANT, MALIGNANT]
    # The first pass ranks one malignant below the benign; the second puts it right.
    first = [[3, 0, 0], [0, 2, 1], [0, 0, 3], [0, 2, 0]]
    second = [[3, 0, 0], [0, 2, 0], [0, 0, 3], [0, 0, 4]]
    scored = _scored(first, second, labels)
    alone = summarise(scored, None, np.zeros(3), 1.0)
    both = summarise(scored, 0, np.zeros(3), 1.0)
    assert alone["auc_mb"] == 0.5 and both["auc_mb"] == 1.0
    assert alone["dice"] == 0.5 and both["dice"] == 0.75
    assert both["recall"] == {"normal": 1.0, "benign": 1.0, "malignant": 1.0}
    averaged = np.exp([0, 1, 2]) / np.exp([0, 1, 2]).sum()
    assert both["p_malignant"][3] == pytest.approx(averaged[MALIGNANT])


def test_merge_keeps_margins_on_the_first_axis():
    a = _scored([[1, 0, 0]], [[0, 1, 0]], [NORMAL])
    b = _scored([[0, 1, 0], [0, 0, 1]], [[0, 1, 0], [1, 0, 0]], [BENIGN, MALIGNANT])
    merged = merge([a, b])
    assert merged["second"].shape == (1, 3, 3)
    assert merged["dice2"].shape == (1, 3)
    assert list(merged["labels"]) == [NORMAL, BENIGN, MALIGNANT]

from __future__ import annotations

import numpy as np

from ml.training.augment import augmenter, mark_bank


def test_the_mark_bank_draws_marks_of_every_layer():
    bank = mark_bank(64, count=12)
    assert bank.shape == (12, 64, 64, 2)
    assert (bank[..., 1].reshape(12, -1).max(axis=1) == 255).all()


def test_the_mask_moves_with_the_image():
    size = 64
    images = np.zeros((8, size, size, 3), np.uint8)
    masks = np.zeros((8, size, size), bool)
    for i in range(8):
        top, left = 8 + 3 * i, 40 - 4 * i
        images[i, top : top + 20, left : left + 16] = 250
        masks[i, top : top + 20, left : left + 16] = True
    augment = augmenter(size, seed=3)
    out_images, out_masks = augment(images, masks)
    out_images, out_masks = np.asarray(out_images), np.asarray(out_masks) > 0.5
    assert out_images.shape == (8, size, size, 3) and out_masks.shape == (8, size, size)
    assert 0.0 <= out_images.min() and out_images.max() <= 255.0
    for image, mask in zip(out_images, out_masks, strict=True):
        if mask.sum() < 20:  # cropped out of view
            continue
        bright = image.mean(axis=-1) > 100
        overlap = (bright & mask).sum() / max(mask.sum(), 1)
        assert overlap > 0.7

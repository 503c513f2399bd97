"""What the network sees: the image's luminance, in the backbone's input range.

Colour differs between sites for reasons that say nothing about the breast (BUS-UCLM's
scanner tints its B-mode, some exports carry coloured annotations, others are grey), so the
network is given luminance only (ITU-R BT.601 weights), repeated into the three channels the
ImageNet-pretrained encoder expects. Training and inference both call :func:`network_input`;
there is no second definition.
"""

from __future__ import annotations

from keras import ops

LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def luminance(images):
    """RGB (..., 3) in [0, 255] to grey (..., 1), float32; numpy arrays or tensors."""
    pixels = ops.cast(images, "float32")
    return ops.sum(
        pixels * ops.convert_to_tensor(LUMA_WEIGHTS, "float32"), axis=-1, keepdims=True
    )


def network_input(images):
    """RGB (B, H, W, 3) uint8 or float in [0, 255] to the encoder's input (official Lite scaling)."""
    from ml.backbone import preprocess

    grey = luminance(images)
    return preprocess(ops.concatenate([grey, grey, grey], axis=-1))

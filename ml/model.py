"""BUSNet: one EfficientNet-Lite0 encoder shared by a classification head and a U-Net decoder.

The encoder runs once per image for both tasks. The decoder follows U-Net (Ronneberger et
al., MICCAI 2015): upsample, concatenate the encoder's skip features, convolve; it stops at
half resolution and the logits are upsampled bilinearly, which costs little Dice and saves
the most expensive convolutions.
"""

from __future__ import annotations

import keras
from keras import layers

from ml.backbone import SKIP_BLOCKS, block_output_name, build_efficientnet_lite0
from ml.config import CLASSES, IMAGE_SIZE

# Decoder stages from stride 16 up to stride 2: (skip block, filters, convolutions).
DECODER_STAGES: tuple[tuple[int, int, int], ...] = (
    (10, 96, 2),
    (4, 64, 2),
    (2, 32, 1),
    (0, 24, 1),
)
CLASS_GRADCAM_LAYER = "head_relu"
SEG_GRADCAM_LAYER = "decoder1_conv2_relu"  # the stride-8 decoder stage
CLASS_OUTPUT = "class_logits"
SEG_OUTPUT = "seg_logits"


class _Layers:
    """Creates named layers, or, given an existing model, returns that model's layers by name.

    The same code then builds the network and the sub-networks explanations run on, which
    share the network's weights.
    """

    def __init__(self, model: keras.Model | None = None) -> None:
        self.model = model

    def __call__(self, factory, name: str, *args, **kwargs):
        return (
            self.model.get_layer(name)
            if self.model is not None
            else factory(*args, name=name, **kwargs)
        )


def _class_head(features, make: _Layers, dropout: float = 0.3):
    pooled = make(layers.GlobalAveragePooling2D, "class_pool")(features)
    pooled = make(layers.Dropout, "class_dropout", dropout)(pooled)
    return make(layers.Dense, CLASS_OUTPUT, len(CLASSES))(pooled)


def _decoder(x, skips: dict, make: _Layers, first_stage: int = 0):
    """U-Net decoder from stage ``first_stage`` to the lesion logits."""
    for stage, (skip_block, filters, convs) in enumerate(DECODER_STAGES):
        if stage < first_stage:
            continue
        x = make(
            layers.UpSampling2D, f"decoder{stage}_up", 2, interpolation="bilinear"
        )(x)
        x = make(layers.Concatenate, f"decoder{stage}_concat")([x, skips[skip_block]])
        for conv in range(convs):
            name = f"decoder{stage}_conv{conv + 1}"
            x = make(
                layers.Conv2D,
                f"{name}_conv",
                filters,
                3,
                padding="same",
                use_bias=False,
            )(x)
            x = make(layers.BatchNormalization, f"{name}_bn")(x)
            x = make(layers.ReLU, f"{name}_relu")(x)
    x = make(layers.Conv2D, "seg_head", 1, 1)(x)
    return make(layers.UpSampling2D, SEG_OUTPUT, 2, interpolation="bilinear")(x)


def build_busnet(image_size: int = IMAGE_SIZE, *, dropout: float = 0.3) -> keras.Model:
    """Outputs: ``class_logits`` (B, 3) and ``seg_logits`` (B, H, W, 1), both before activation."""
    encoder = build_efficientnet_lite0((image_size, image_size, 3), include_top=False)
    inputs = encoder.input
    skips = {
        block: encoder.get_layer(block_output_name(block)).output
        for block in SKIP_BLOCKS
    }

    make = _Layers()
    class_logits = _class_head(
        encoder.get_layer(CLASS_GRADCAM_LAYER).output, make, dropout
    )
    seg_logits = _decoder(skips[SKIP_BLOCKS[-1]], skips, make)
    return keras.Model(
        inputs, {CLASS_OUTPUT: class_logits, SEG_OUTPUT: seg_logits}, name="busnet"
    )


def encoder_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers that came from EfficientNet-Lite0 (stem, blocks and head conv)."""
    prefixes = ("stem_", "block", "head_")
    return [layer for layer in model.layers if layer.name.startswith(prefixes)]

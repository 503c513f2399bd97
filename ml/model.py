"""BUSNet: one EfficientNet-Lite encoder shared by a classification head and a U-Net decoder.

The encoder runs once per image for both tasks. The decoder follows U-Net (Ronneberger et
al., MICCAI 2015): upsample, concatenate the encoder's skip features, convolve; it stops at
half resolution and the logits are upsampled bilinearly, which costs little Dice and saves
the most expensive convolutions.
"""

from __future__ import annotations

import keras
from keras import layers

from ml.backbone import backbone_named, block_output_name, build_efficientnet_lite
from ml.config import BACKBONE, CLASS_HEADS, CLASSES, IMAGE_SIZE

# Decoder stages from stride 16 up to stride 2: (the encoder's stride it joins, filters,
# convolutions).
DECODER_STAGES: tuple[tuple[int, int, int], ...] = (
    (16, 96, 2),
    (8, 64, 2),
    (4, 32, 1),
    (2, 24, 1),
)
CLASS_GRADCAM_LAYER = "head_relu"
SEG_GRADCAM_LAYER = "decoder1_conv2_relu"  # the stride-8 decoder stage
CLASS_OUTPUT = "class_logits"
SEG_OUTPUT = "seg_logits"


class LesionPooling(layers.Layer):
    """Mean of ``features`` weighted by the lesion probability at their resolution.

    The weights are held constant for the class loss (stop-gradient): classification reads
    the segmentation, it does not reshape it. With no lesion predicted the weights are all
    near zero and ``epsilon`` keeps the result near zero instead of amplifying noise.
    """

    def __init__(self, epsilon: float = 0.05, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def call(self, features, lesion):
        weights = keras.ops.stop_gradient(lesion)
        total = keras.ops.sum(features * weights, axis=(1, 2))
        return total / (keras.ops.sum(weights, axis=(1, 2)) + self.epsilon)


def _class_head(features, seg_logits, dropout: float, kind: str):
    pooled = layers.GlobalAveragePooling2D(name="class_pool")(features)
    if kind == "lesion":
        stride = seg_logits.shape[1] // features.shape[1]
        lesion = layers.Activation("sigmoid", name="class_lesion_probability")(
            seg_logits
        )
        lesion = layers.AveragePooling2D(stride, name="class_lesion_downsample")(lesion)
        focused = LesionPooling(name="class_lesion_pool")(features, lesion)
        pooled = layers.Concatenate(name="class_pools")([pooled, focused])
    elif kind != "global":
        raise ValueError(f"class head must be one of {CLASS_HEADS}, got {kind!r}")
    pooled = layers.Dropout(dropout, name="class_dropout")(pooled)
    return layers.Dense(len(CLASSES), name=CLASS_OUTPUT)(pooled)


def _decoder(x, skips: dict):
    """U-Net decoder from the deepest features to the lesion logits."""
    for stage, (skip_stride, filters, convs) in enumerate(DECODER_STAGES):
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"decoder{stage}_up")(
            x
        )
        x = layers.Concatenate(name=f"decoder{stage}_concat")([x, skips[skip_stride]])
        for conv in range(convs):
            name = f"decoder{stage}_conv{conv + 1}"
            x = layers.Conv2D(
                filters, 3, padding="same", use_bias=False, name=f"{name}_conv"
            )(x)
            x = layers.BatchNormalization(name=f"{name}_bn")(x)
            x = layers.ReLU(name=f"{name}_relu")(x)
    x = layers.Conv2D(1, 1, name="seg_head")(x)
    return layers.UpSampling2D(2, interpolation="bilinear", name=SEG_OUTPUT)(x)


def build_busnet(
    image_size: int = IMAGE_SIZE,
    *,
    class_head: str = "global",
    backbone: str = BACKBONE,
    dropout: float = 0.3,
) -> keras.Model:
    """Outputs: ``class_logits`` (B, 3) and ``seg_logits`` (B, H, W, 1), both before activation."""
    spec = backbone_named(backbone)
    encoder = build_efficientnet_lite(
        (image_size, image_size, 3), backbone=spec, include_top=False
    )
    inputs = encoder.input
    skips = {
        stride: encoder.get_layer(block_output_name(block, spec)).output
        for stride, block in spec.skip_blocks.items()
    }

    seg_logits = _decoder(skips[max(skips)], skips)
    class_logits = _class_head(
        encoder.get_layer(CLASS_GRADCAM_LAYER).output, seg_logits, dropout, class_head
    )
    return keras.Model(
        inputs, {CLASS_OUTPUT: class_logits, SEG_OUTPUT: seg_logits}, name="busnet"
    )


def build_for(meta) -> keras.Model:
    """The network ``meta`` (an ``ml.weights_io.ModelMeta``) describes, before its weights."""
    return build_busnet(
        meta.image_size, class_head=meta.class_head, backbone=meta.backbone
    )


def encoder_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers that came from EfficientNet-Lite (stem, blocks and head conv)."""
    prefixes = ("stem_", "block", "head_")
    return [layer for layer in model.layers if layer.name.startswith(prefixes)]

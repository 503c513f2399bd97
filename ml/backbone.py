"""EfficientNet-Lite0 and -Lite2 in Keras, loadable from the ImageNet numpy archives in
``shared/weights``.

Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs" (ICML 2019); the Lite variants
(tensorflow/tpu, models/official/efficientnet/lite) drop squeeze-excitation and use ReLU6,
and keep the stem (32) and head (1280) of Lite0 at every size: Lite2 only has more blocks
and wider ones. Every layer has a deterministic name so explanations can find their layer by
name; a block is named by its index, so code that taps blocks asks :attr:`Backbone.skip_blocks`
for the block at a stride instead of naming an index.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

BN_EPSILON = 1e-3
STEM_FILTERS = 32
HEAD_FILTERS = 1280
IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class BlockGroup:
    repeats: int
    kernel: int
    stride: int
    expand: int
    filters: int


# The strides at which a U-Net decoder (and the out-of-distribution features) tap the encoder.
SKIP_STRIDES: tuple[int, ...] = (2, 4, 8, 16, 32)


@dataclass(frozen=True)
class Backbone:
    """One EfficientNet-Lite size (its ImageNet archive: ``ml.config.imagenet_weights_path``)."""

    name: str
    # (repeats, kernel, first stride, expand ratio, output channels) per group
    groups: tuple[BlockGroup, ...]

    def block_specs(self) -> list[tuple[int, int, int, int, int]]:
        """(kernel, stride, expand, filters_in, filters_out) for each block."""
        specs = []
        filters_in = STEM_FILTERS
        for group in self.groups:
            for repeat in range(group.repeats):
                stride = group.stride if repeat == 0 else 1
                specs.append(
                    (group.kernel, stride, group.expand, filters_in, group.filters)
                )
                filters_in = group.filters
        return specs

    @property
    def skip_blocks(self) -> dict[int, int]:
        """Stride -> the last block whose output has that stride (the stem halves first)."""
        blocks, stride = {}, 2
        for index, (_, block_stride, *_rest) in enumerate(self.block_specs()):
            stride *= block_stride
            blocks[stride] = index
        return {s: blocks[s] for s in SKIP_STRIDES}


LITE0 = Backbone(
    "lite0",
    (
        BlockGroup(1, 3, 1, 1, 16),
        BlockGroup(2, 3, 2, 6, 24),
        BlockGroup(2, 5, 2, 6, 40),
        BlockGroup(3, 3, 2, 6, 80),
        BlockGroup(3, 5, 1, 6, 112),
        BlockGroup(4, 5, 2, 6, 192),
        BlockGroup(1, 3, 1, 6, 320),
    ),
)
# ``shared/weights/efficientnet_lite2_imagenet/README.md``: the groups read from the tensors.
LITE2 = Backbone(
    "lite2",
    (
        BlockGroup(1, 3, 1, 1, 16),
        BlockGroup(3, 3, 2, 6, 24),
        BlockGroup(3, 5, 2, 6, 48),
        BlockGroup(4, 3, 2, 6, 88),
        BlockGroup(4, 5, 1, 6, 120),
        BlockGroup(5, 5, 2, 6, 208),
        BlockGroup(1, 3, 1, 6, 352),
    ),
)
BACKBONES: dict[str, Backbone] = {b.name: b for b in (LITE0, LITE2)}


def backbone_named(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(
            f"backbone must be one of {sorted(BACKBONES)}, got {name!r}"
        ) from None


def preprocess(images):
    """RGB in [0, 255] (arrays or tensors) to the encoder's input range (the official Lite scaling)."""
    return (keras.ops.cast(images, "float32") - 127.0) / 128.0


def _mbconv(
    x,
    index: int,
    kernel: int,
    stride: int,
    expand: int,
    filters_in: int,
    filters_out: int,
):
    name = f"block{index}"
    inputs = x
    if expand != 1:
        x = layers.Conv2D(
            filters_in * expand, 1, use_bias=False, name=f"{name}_expand_conv"
        )(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_expand_bn")(x)
        x = layers.ReLU(6.0, name=f"{name}_expand_relu")(x)
    x = layers.DepthwiseConv2D(
        kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_dwconv"
    )(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_dw_bn")(x)
    x = layers.ReLU(6.0, name=f"{name}_dw_relu")(x)
    x = layers.Conv2D(filters_out, 1, use_bias=False, name=f"{name}_project_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_project_bn")(x)
    if stride == 1 and filters_in == filters_out:
        x = layers.Add(name=f"{name}_add")([x, inputs])
    return x


def block_output_name(index: int, backbone: Backbone = LITE0) -> str:
    """Name of the layer whose output is block ``index``'s output."""
    _, stride, _, filters_in, filters_out = backbone.block_specs()[index]
    return (
        f"block{index}_add"
        if stride == 1 and filters_in == filters_out
        else f"block{index}_project_bn"
    )


def build_efficientnet_lite(
    input_shape: tuple[int | None, int | None, int] = (224, 224, 3),
    *,
    backbone: Backbone = LITE0,
    include_top: bool = True,
    dropout: float = 0.2,
) -> keras.Model:
    """EfficientNet-Lite of ``backbone``'s size. Input is preprocessed RGB (see :func:`preprocess`).

    With ``include_top`` the output is 1000 ImageNet logits; without it, the 1280-channel
    feature map after ``head_relu``.
    """
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"input_shape must be (height, width, 3), got {input_shape}")
    for side in input_shape[:2]:
        if side is not None and side % 32:
            raise ValueError(f"input sides must be multiples of 32, got {input_shape}")

    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Conv2D(
        STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv"
    )(inputs)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    for index, spec in enumerate(backbone.block_specs()):
        x = _mbconv(x, index, *spec)
    x = layers.Conv2D(HEAD_FILTERS, 1, use_bias=False, name="head_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name="head_bn")(x)
    x = layers.ReLU(6.0, name="head_relu")(x)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dropout(dropout, name="top_dropout")(x)
        x = layers.Dense(IMAGENET_CLASSES, name="predictions")(x)
    return keras.Model(inputs, x, name=f"efficientnet_{backbone.name}")


def _bn(archive, prefix: str) -> list[np.ndarray]:
    return [
        archive[f"{prefix}.{key}"]
        for key in ("weight", "bias", "running_mean", "running_var")
    ]


def _conv(weight: np.ndarray) -> np.ndarray:
    return weight.transpose(2, 3, 1, 0)


def load_imagenet_weights(
    model: keras.Model, npz_path: str | Path, backbone: Backbone = LITE0
) -> None:
    """Assign the archive's tensors to a model built by :func:`build_efficientnet_lite`
    with the same ``backbone``.

    Raises ``ValueError`` if a tensor is missing, has the wrong shape, or is left unused.
    The model may be a larger network containing these layers by name.
    """
    with np.load(npz_path) as archive:
        tensors = {key: archive[key] for key in archive.files}
    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        if key not in tensors:
            raise ValueError(f"{npz_path}: tensor {key!r} is missing")
        used.add(key)
        return tensors[key]

    def assign(layer_name: str, values: list[np.ndarray]) -> None:
        layer = model.get_layer(layer_name)
        expected = [tuple(w.shape) for w in layer.get_weights()]
        got = [tuple(v.shape) for v in values]
        if expected != got:
            raise ValueError(
                f"{layer_name}: shapes {got} do not match the layer's {expected}"
            )
        layer.set_weights(values)

    def assign_bn(layer_name: str, prefix: str) -> None:
        assign(
            layer_name,
            [
                take(f"{prefix}.{k}")
                for k in ("weight", "bias", "running_mean", "running_var")
            ],
        )

    assign("stem_conv", [_conv(take("_conv_stem.weight"))])
    assign_bn("stem_bn", "_bn0")
    for index, (_, _, expand, _, _) in enumerate(backbone.block_specs()):
        prefix = f"_blocks.{index}"
        if expand != 1:
            assign(
                f"block{index}_expand_conv",
                [_conv(take(f"{prefix}._expand_conv.weight"))],
            )
            assign_bn(f"block{index}_expand_bn", f"{prefix}._bn0")
        assign(
            f"block{index}_dwconv",
            [take(f"{prefix}._depthwise_conv.weight").transpose(2, 3, 0, 1)],
        )
        assign_bn(f"block{index}_dw_bn", f"{prefix}._bn1")
        assign(
            f"block{index}_project_conv",
            [_conv(take(f"{prefix}._project_conv.weight"))],
        )
        assign_bn(f"block{index}_project_bn", f"{prefix}._bn2")
    assign("head_conv", [_conv(take("_conv_head.weight"))])
    assign_bn("head_bn", "_bn1")

    top = [layer for layer in model.layers if layer.name == "predictions"]
    if top:
        assign("predictions", [take("_fc.weight").T, take("_fc.bias")])
    else:
        used.update({"_fc.weight", "_fc.bias"})
    unused = sorted(set(tensors) - used)
    if unused:
        raise ValueError(f"{npz_path}: tensors left unassigned: {unused[:5]}")

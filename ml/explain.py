"""Grad-CAM for the classification and Seg-Grad-CAM for the segmentation, from one forward pass.

- Grad-CAM (Selvaraju et al., ICCV 2017): weights each channel of a convolutional layer by
  the spatial mean of the gradient of a class logit, sums, keeps the positive part.
- Seg-Grad-CAM (Vinogradova et al., AAAI 2020): the same with the target being the sum of
  the segmentation logits over the predicted lesion region.

The model is never modified: a second functional view of it exposes the target layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf


@dataclass
class Explanation:
    class_logits: np.ndarray  # (B, classes)
    seg_logits: np.ndarray  # (B, H, W) at network resolution
    class_cam: np.ndarray  # (B, H, W) in [0, 1], network input resolution
    seg_cam: np.ndarray  # (B, H, W) in [0, 1]
    explained_class: np.ndarray  # (B,) the class index whose logit class_cam explains
    # (B, C): the spatial means of the feature layers' activations, then the class layer's
    features: np.ndarray


def _cam(
    activations: tf.Tensor, gradients: tf.Tensor, size: tuple[int, int]
) -> tf.Tensor:
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * activations, axis=-1, keepdims=True))
    cam = tf.image.resize(cam, size, method="bilinear")[..., 0]
    peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
    # An all-zero map (no positive evidence, or an empty lesion region) stays zero.
    return tf.where(peak > 1e-12, cam / tf.maximum(peak, 1e-12), tf.zeros_like(cam))


class Explainer:
    """Runs the network once and returns its outputs with both heatmaps.

    ``class_index`` names the class to explain per image; by default the predicted class,
    which is the argmax of ``class_logits + class_bias``: with the calibration's class offsets
    given here, the heatmap explains the label the product shows, not the raw argmax.
    """

    def __init__(
        self,
        model: keras.Model,
        *,
        class_layer: str,
        seg_layer: str,
        class_output: str = "class_logits",
        seg_output: str = "seg_logits",
        seg_threshold: float = 0.5,
        class_bias: np.ndarray | list[float] | None = None,
        feature_layers: list[str] | tuple[str, ...] = (),
    ) -> None:
        names = {layer.name for layer in model.layers}
        for name in (class_layer, seg_layer, *feature_layers):
            if name not in names:
                raise ValueError(f"layer {name!r} not found in model {model.name!r}")
        outputs = model.output
        if (
            not isinstance(outputs, dict)
            or class_output not in outputs
            or seg_output not in outputs
        ):
            raise ValueError(
                f"model must have dict outputs {class_output!r} and {seg_output!r}"
            )
        if not 0.0 < seg_threshold < 1.0:
            raise ValueError(f"seg_threshold must be in (0, 1), got {seg_threshold}")
        self._view = keras.Model(
            model.input,
            [
                model.get_layer(class_layer).output,
                model.get_layer(seg_layer).output,
                outputs[class_output],
                outputs[seg_output],
                *(model.get_layer(name).output for name in feature_layers),
            ],
        )
        classes = int(outputs[class_output].shape[-1])
        bias = np.zeros(classes) if class_bias is None else np.asarray(class_bias)
        if bias.shape != (classes,):
            raise ValueError(f"class_bias needs {classes} values, got {bias.shape}")
        self._class_bias = tf.constant(bias, tf.float32)
        self._seg_logit_threshold = float(np.log(seg_threshold / (1.0 - seg_threshold)))
        self._run = tf.function(self._explain, reduce_retracing=True)

    def _explain(self, images: tf.Tensor, class_index: tf.Tensor):
        size = (tf.shape(images)[1], tf.shape(images)[2])
        with tf.GradientTape(persistent=True) as tape:
            class_features, seg_features, class_logits, seg_logits, *extra = self._view(
                images, training=False
            )
            predicted = tf.argmax(
                class_logits + self._class_bias, axis=1, output_type=tf.int32
            )
            chosen = tf.where(class_index < 0, predicted, class_index)
            # Images in a batch are independent (inference mode): summed targets give per-image gradients.
            class_score = tf.reduce_sum(
                tf.gather(class_logits, chosen, axis=1, batch_dims=1)
            )
            region = tf.cast(
                tf.stop_gradient(seg_logits) >= self._seg_logit_threshold,
                seg_logits.dtype,
            )
            seg_score = tf.reduce_sum(seg_logits * region)
        class_gradients = tape.gradient(class_score, class_features)
        seg_gradients = tape.gradient(seg_score, seg_features)
        del tape
        return (
            class_logits,
            seg_logits[..., 0],
            _cam(class_features, class_gradients, size),
            _cam(seg_features, seg_gradients, size),
            chosen,
            tf.concat(
                [tf.reduce_mean(f, axis=(1, 2)) for f in (*extra, class_features)],
                axis=1,
            ),
        )

    def __call__(
        self, images: np.ndarray, class_index: np.ndarray | list[int] | None = None
    ) -> Explanation:
        images = tf.convert_to_tensor(images, tf.float32)
        count = int(images.shape[0])
        # -1 means "the predicted class", resolved inside the same forward pass.
        chosen = (
            np.full(count, -1, np.int32)
            if class_index is None
            else np.asarray(class_index, np.int32).reshape(-1)
        )
        if chosen.shape[0] != count:
            raise ValueError(
                f"class_index needs one entry per image ({count}), got {chosen.shape[0]}"
            )
        outputs = self._run(images, tf.convert_to_tensor(chosen))
        return Explanation(*(np.asarray(output) for output in outputs))

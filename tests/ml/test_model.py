from __future__ import annotations

import keras
import numpy as np
import pytest

from ml.explain import Explainer
from ml.model import CLASS_GRADCAM_LAYER, SEG_GRADCAM_LAYER, build_busnet


@pytest.fixture(scope="module")
def busnet():
    return build_busnet(256)


def test_busnet_outputs_class_logits_and_a_full_resolution_mask(busnet):
    outputs = busnet(np.zeros((2, 256, 256, 3), np.float32), training=False)
    assert outputs["class_logits"].shape == (2, 3)
    assert outputs["seg_logits"].shape == (2, 256, 256, 1)


def test_busnet_parameter_count(busnet):
    # Encoder 3.41M + class head 3,843 + decoder; a change here changes the weights file format.
    assert busnet.count_params() == 4_025_500
    assert busnet.get_layer(CLASS_GRADCAM_LAYER).output.shape[1:] == (8, 8, 1280)
    assert busnet.get_layer(SEG_GRADCAM_LAYER).output.shape[1:] == (32, 32, 64)


def test_explainer_heatmaps_have_input_size_and_range(busnet):
    images = np.random.default_rng(0).normal(size=(2, 256, 256, 3)).astype(np.float32)
    explanation = Explainer(
        busnet, class_layer=CLASS_GRADCAM_LAYER, seg_layer=SEG_GRADCAM_LAYER
    )(images, [2, 0])
    for cam in (explanation.class_cam, explanation.seg_cam):
        assert cam.shape == (2, 256, 256)
        assert cam.min() >= 0.0 and cam.max() <= 1.0


def test_explainer_rejects_unknown_layers(busnet):
    with pytest.raises(ValueError, match="not found"):
        Explainer(busnet, class_layer="nope", seg_layer=SEG_GRADCAM_LAYER)


def evidence_model() -> keras.Model:
    """A network whose evidence is known: class 1 and the lesion logit rise with brightness."""
    image = keras.Input((32, 32, 3))
    features = keras.layers.Conv2D(2, 1, name="features", kernel_initializer="zeros")(
        image
    )
    seg_features = keras.layers.ReLU(name="seg_features")(features)
    pooled = keras.layers.GlobalAveragePooling2D()(seg_features)
    class_logits = keras.layers.Dense(2, name="class_logits")(pooled)
    seg_logits = keras.layers.Conv2D(1, 1, name="seg_logits")(seg_features)
    model = keras.Model(image, {"class_logits": class_logits, "seg_logits": seg_logits})
    kernel = np.zeros((1, 1, 3, 2), np.float32)
    kernel[0, 0, :, 0] = 1.0  # channel 0: brightness
    kernel[0, 0, :, 1] = -1.0  # channel 1: darkness (relu'd away on bright pixels)
    model.get_layer("features").set_weights([kernel, np.zeros(2, np.float32)])
    model.get_layer("class_logits").set_weights(
        [np.array([[-1.0, 1.0], [1.0, -1.0]], np.float32), np.zeros(2)]
    )
    model.get_layer("seg_logits").set_weights(
        [np.array([[[[4.0], [-4.0]]]], np.float32), np.array([-1.0])]
    )
    return model


def test_heatmaps_follow_the_evidence_on_a_constructed_case():
    image = np.full((1, 32, 32, 3), -0.02, np.float32)
    image[0, 4:12, 20:28] = 1.0  # a bright "lesion" top right
    explainer = Explainer(
        evidence_model(), class_layer="features", seg_layer="seg_features"
    )
    explanation = explainer(image)
    inside = np.zeros((32, 32), bool)
    inside[4:12, 20:28] = True
    assert explanation.class_logits[0].argmax() == 1
    for cam in (explanation.class_cam[0], explanation.seg_cam[0]):
        assert cam[inside].mean() > 0.8 and cam[~inside].mean() < 0.2
        assert inside[np.unravel_index(cam.argmax(), cam.shape)]


def test_explaining_the_other_class_points_elsewhere():
    image = np.full((1, 32, 32, 3), -0.02, np.float32)
    image[0, 4:12, 20:28] = 1.0
    explanation = Explainer(
        evidence_model(), class_layer="features", seg_layer="seg_features"
    )(image, [0])
    inside = np.zeros((32, 32), bool)
    inside[4:12, 20:28] = True
    assert (
        explanation.class_cam[0][~inside].mean()
        > explanation.class_cam[0][inside].mean()
    )


def test_lesion_pooling_reads_the_features_under_the_lesion():
    from ml.model import LesionPooling

    features = np.zeros((2, 4, 4, 1), np.float32)
    features[:, 0, 0, 0] = 8.0  # what lies under the lesion
    features[:, 3, 3, 0] = -8.0  # elsewhere
    lesion = np.zeros((2, 4, 4, 1), np.float32)
    lesion[0, 0, 0, 0] = 1.0  # image 0: a lesion at the top left; image 1: none
    pooled = np.asarray(LesionPooling(epsilon=0.05)(features, lesion))
    assert pooled[0, 0] == pytest.approx(8.0 / 1.05)
    assert pooled[1, 0] == 0.0


def test_lesion_class_head_adds_one_pooled_copy_of_the_features_and_no_more():
    model = build_busnet(256, class_head="lesion")
    assert model.count_params() == 4_025_500 + 1280 * 3
    outputs = model(np.zeros((1, 256, 256, 3), np.float32), training=False)
    assert outputs["class_logits"].shape == (1, 3)
    with pytest.raises(ValueError, match="class head"):
        build_busnet(64, class_head="roi")

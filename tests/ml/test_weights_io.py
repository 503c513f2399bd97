from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from ml import weights_io


def tiny_model() -> keras.Model:
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(3, name="dense")(inputs))


def test_weights_round_trip_in_float16_with_calibration_in_the_versioned_archive(
    tmp_path,
):
    model = tiny_model()
    meta = weights_io.ModelMeta(
        name="tiny",
        version="",
        image_size=32,
        classes=["a", "b", "c"],
        temperature=1.7,
        class_bias=[0.5, 0.0, -0.25],
    )
    saved = weights_io.save(model, tmp_path, meta)
    assert (
        saved.version == f"tiny-{weights_io.sha256_of(tmp_path / 'weights.npz')[:12]}"
    )
    assert json.loads((tmp_path / "model.json").read_text())["version"] == saved.version

    # The archive, not model.json, is authoritative for the calibration.
    payload = json.loads((tmp_path / "model.json").read_text())
    payload["temperature"] = 99.0
    (tmp_path / "model.json").write_text(json.dumps(payload))
    restored = tiny_model()
    loaded = weights_io.load_into(restored, tmp_path)
    assert loaded.temperature == pytest.approx(1.7) and loaded.class_bias == [
        0.5,
        0.0,
        -0.25,
    ]
    for original, copy in zip(model.get_weights(), restored.get_weights(), strict=True):
        np.testing.assert_allclose(original, copy, atol=1e-3)


def test_a_tampered_archive_is_refused(tmp_path):
    meta = weights_io.ModelMeta(
        name="tiny", version="", image_size=32, classes=["a", "b", "c"]
    )
    weights_io.save(tiny_model(), tmp_path, meta)
    data = bytearray((tmp_path / "weights.npz").read_bytes())
    data[-10] ^= 0xFF
    (tmp_path / "weights.npz").write_bytes(bytes(data))
    with pytest.raises(weights_io.ModelLoadError, match="does not match the sha256"):
        weights_io.load_into(tiny_model(), tmp_path)


def test_weights_for_another_network_are_refused(tmp_path):
    meta = weights_io.ModelMeta(
        name="tiny", version="", image_size=32, classes=["a", "b", "c"]
    )
    weights_io.save(tiny_model(), tmp_path, meta)
    inputs = keras.Input((4,))
    other = keras.Model(inputs, keras.layers.Dense(2, name="other")(inputs))
    with pytest.raises(weights_io.ModelLoadError, match="do not fit"):
        weights_io.load_into(other, tmp_path)


def test_a_backbone_this_code_cannot_build_is_refused(tmp_path):
    meta = weights_io.ModelMeta(
        name="tiny", version="", image_size=32, classes=["a", "b", "c"]
    )
    weights_io.save(tiny_model(), tmp_path, meta)
    described = json.loads((tmp_path / "model.json").read_text())
    assert described["backbone"] == "lite0"
    (tmp_path / "model.json").write_text(json.dumps({**described, "backbone": "lite9"}))
    with pytest.raises(weights_io.ModelLoadError, match="backbone 'lite9'"):
        weights_io.read_meta(tmp_path)


def test_weights_saved_before_the_backbone_was_recorded_are_lite0(tmp_path):
    meta = weights_io.ModelMeta(
        name="tiny", version="", image_size=32, classes=["a", "b", "c"]
    )
    weights_io.save(tiny_model(), tmp_path, meta)
    described = json.loads((tmp_path / "model.json").read_text())
    del described["backbone"]
    (tmp_path / "model.json").write_text(json.dumps(described))
    assert weights_io.read_meta(tmp_path).backbone == "lite0"


def test_a_class_head_this_code_cannot_build_is_refused(tmp_path):
    meta = weights_io.ModelMeta(
        name="tiny", version="", image_size=32, classes=["a", "b", "c"]
    )
    weights_io.save(tiny_model(), tmp_path, meta)
    described = json.loads((tmp_path / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps({**described, "class_head": "roi"}))
    with pytest.raises(weights_io.ModelLoadError, match="class head 'roi'"):
        weights_io.read_meta(tmp_path)

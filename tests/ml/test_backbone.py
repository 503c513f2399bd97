from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ml.backbone import (
    LITE0,
    LITE2,
    backbone_named,
    block_output_name,
    build_efficientnet_lite,
    load_imagenet_weights,
    preprocess,
)

# ImageNet-1k indices.
TIGER_CAT, TABBY, EGYPTIAN_CAT, ESPRESSO, CUP, MISSILE, PROJECTILE = (
    282,
    281,
    285,
    967,
    968,
    657,
    744,
)


def centre_crop(array: np.ndarray, size: int = 224) -> np.ndarray:
    image = Image.fromarray(array).convert("RGB")
    side = int(min(image.size) * 0.875)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return np.asarray(
        image.crop((left, top, left + side, top + side)).resize(
            (size, size), Image.BICUBIC
        )
    )


def test_the_backbone_has_the_published_shape_and_parameter_count():
    model = build_efficientnet_lite(include_top=False)
    assert model.output.shape[1:] == (7, 7, 1280)
    # The weights README: 3.41M parameters without the Dense layer, BN statistics included.
    assert round(model.count_params() / 1e6, 2) == 3.41
    assert model.get_layer(block_output_name(15)).output.shape[1:] == (7, 7, 320)
    assert model.get_layer(block_output_name(4)).output.shape[1:] == (28, 28, 40)
    assert build_efficientnet_lite().count_params() == 4_694_024


def test_lite2_has_the_shape_its_archive_describes():
    # shared/weights/efficientnet_lite2_imagenet/README.md: 6,150,168 numbers with the top.
    assert build_efficientnet_lite(backbone=LITE2).count_params() == 6_150_168
    model = build_efficientnet_lite(backbone=LITE2, include_top=False)
    assert model.output.shape[1:] == (7, 7, 1280)  # the head is Lite0's at every size
    assert model.get_layer(block_output_name(20, LITE2)).output.shape[1:] == (7, 7, 352)


@pytest.mark.parametrize(
    ("backbone", "blocks", "channels"),
    [
        (LITE0, {2: 0, 4: 2, 8: 4, 16: 10, 32: 15}, (16, 24, 40, 112, 320)),
        (LITE2, {2: 0, 4: 3, 8: 6, 16: 14, 32: 20}, (16, 24, 48, 120, 352)),
    ],
)
def test_the_tapped_blocks_are_the_last_at_each_stride(backbone, blocks, channels):
    assert backbone.skip_blocks == blocks
    model = build_efficientnet_lite((256, 256, 3), backbone=backbone, include_top=False)
    for (stride, block), width in zip(blocks.items(), channels, strict=True):
        shape = model.get_layer(block_output_name(block, backbone)).output.shape
        assert shape[1:] == (256 // stride, 256 // stride, width)


def test_the_backbones_built_are_the_ones_model_json_may_name():
    from ml.backbone import BACKBONES
    from ml.config import BACKBONE_NAMES

    assert tuple(BACKBONES) == BACKBONE_NAMES


def test_an_unknown_backbone_is_named_in_the_error():
    with pytest.raises(ValueError, match="lite0.*lite2.*'lite9'"):
        backbone_named("lite9")


def test_it_rejects_input_sides_that_are_not_multiples_of_32():
    with pytest.raises(ValueError, match="multiples of 32"):
        build_efficientnet_lite((200, 200, 3))


@pytest.mark.parametrize("backbone", ["lite0", "lite2"])
def test_imagenet_weights_classify_real_photos(request, backbone):
    data = pytest.importorskip(
        "skimage.data", reason="scikit-image provides the sample photos"
    )
    archive = request.getfixturevalue(
        "imagenet_npz" if backbone == "lite0" else "imagenet_npz_lite2"
    )
    model = build_efficientnet_lite(backbone=backbone_named(backbone))
    load_imagenet_weights(model, archive, backbone_named(backbone))
    photos = np.stack(
        [
            centre_crop(data.chelsea()),
            centre_crop(data.coffee()),
            centre_crop(data.rocket()),
        ]
    )
    top3 = np.argsort(-model.predict(preprocess(photos), verbose=0), axis=1)[:, :3]
    assert top3[0, 0] in (TIGER_CAT, TABBY, EGYPTIAN_CAT)
    assert top3[1, 0] in (ESPRESSO, CUP)
    # Lite2 puts the rocket's missile second, after an offshore rig, as its README records.
    rank = 1 if backbone == "lite0" else 2
    assert set(top3[2, :rank]) & {MISSILE, PROJECTILE}


def test_random_weights_do_not_pass_the_photo_check():
    data = pytest.importorskip(
        "skimage.data", reason="scikit-image provides the sample photos"
    )
    model = build_efficientnet_lite()
    probabilities = model.predict(
        preprocess(centre_crop(data.coffee())[None]), verbose=0
    )
    assert (
        int(np.argmax(probabilities)) not in (ESPRESSO, CUP)
        or probabilities.max() < 0.01
    )


def test_loading_fails_loudly_on_a_mismatched_archive(tmp_path, imagenet_npz):
    with np.load(imagenet_npz) as archive:
        tensors = {k: archive[k] for k in archive.files if k != "_conv_head.weight"}
    broken = tmp_path / "broken.npz"
    np.savez(broken, **tensors)
    with pytest.raises(ValueError, match="_conv_head.weight"):
        load_imagenet_weights(build_efficientnet_lite(), broken)

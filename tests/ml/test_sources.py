from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ml.training.sources import read_manifest

# Class counts each source's README states.
EXPECTED = {
    "busi": {"normal": 133, "benign": 437, "malignant": 210},
    "bus-uclm": {"normal": 419, "benign": 174, "malignant": 90},
    "breast-lesions-usg": {"normal": 4, "benign": 154, "malignant": 98},
}


@pytest.mark.parametrize("source", sorted(EXPECTED))
def test_one_reader_reads_every_source_with_its_class_counts(all_sources, source):
    records = read_manifest(source, all_sources[source])
    counts = {
        label: sum(r.label == label for r in records) for label in EXPECTED[source]
    }
    assert counts == EXPECTED[source]
    assert len({r.key for r in records}) == len(records)
    for record in records:
        assert (all_sources[source] / record.path).is_file()
        assert all((all_sources[source] / m).is_file() for m in record.mask_paths)
        if record.label != "normal":
            assert record.mask_paths, record.path


def test_busi_normal_images_have_empty_masks(busi):
    from ml.training.sources import load_mask

    for record in read_manifest("busi", busi):
        if record.label == "normal":
            with Image.open(busi / record.path) as image:
                assert not load_mask(busi, record, image.size).any(), record.path


def test_patients_are_read_where_the_source_names_them(all_sources):
    assert all(r.patient is None for r in read_manifest("busi", all_sources["busi"]))
    uclm = read_manifest("bus-uclm", all_sources["bus-uclm"])
    assert len({r.patient for r in uclm}) == 38
    usg = read_manifest("breast-lesions-usg", all_sources["breast-lesions-usg"])
    assert len({r.patient for r in usg}) == len(usg) == 256


def test_doppler_and_side_by_side_images_are_marked_excluded(all_sources):
    uclm = read_manifest("bus-uclm", all_sources["bus-uclm"])
    reasons = [r.excluded for r in uclm if r.excluded]
    # 37 Doppler images (one marked "y") and 6 side-by-side ones, per the README.
    assert reasons.count("colour Doppler overlay") == 37
    assert len(reasons) == 43
    assert not any(r.excluded for r in read_manifest("busi", all_sources["busi"]))


def test_pixel_size_is_read_in_millimetres(all_sources):
    usg = read_manifest("breast-lesions-usg", all_sources["breast-lesions-usg"])
    sizes = [r.pixel_size_mm for r in usg if r.pixel_size_mm]
    assert len(sizes) > 200
    # The sheet's ~0.006-0.008 cm per pixel: a 500-pixel image is 30-40 mm wide.
    assert 0.03 < np.median(sizes) < 0.1


def test_multiple_busi_masks_are_combined_with_or(busi):
    from ml.training.sources import load_mask

    record = next(
        r for r in read_manifest("busi", busi) if r.path == "benign/benign (195).png"
    )
    assert len(record.mask_paths) == 3
    masks = []
    for mask_path in record.mask_paths:
        with Image.open(busi / mask_path) as image:
            masks.append(np.asarray(image.convert("L")) > 0)
    size = masks[0].shape[::-1]
    assert np.array_equal(load_mask(busi, record, size), masks[0] | masks[1] | masks[2])

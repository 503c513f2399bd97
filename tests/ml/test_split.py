from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ml.config import DEFAULT_SPLIT_PATH
from ml.data import duplicate_groups, load_mask, make_split, read_manifest

SPLITS = ("train", "val", "test")


def committed() -> dict:
    return json.loads(DEFAULT_SPLIT_PATH.read_text())


def split_of(payload: dict) -> dict[str, str]:
    return {path: name for name in SPLITS for path in payload[name]}


def test_the_committed_split_has_disjoint_parts():
    payload = committed()
    sets = [set(payload[name]) for name in SPLITS]
    assert sum(len(s) for s in sets) == len(set().union(*sets))


def test_no_recorded_duplicate_group_crosses_splits():
    payload = committed()
    where = split_of(payload)
    assert payload["groups"], "the split records its duplicate groups"
    for group in payload["groups"]:
        assert len({where[path] for path in group}) == 1, group


def test_the_split_covers_the_dataset_and_known_cross_class_duplicates_stay_together(
    busi,
):
    payload = committed()
    where = split_of(payload)
    records = read_manifest(busi)
    assert set(where) == {r.path for r in records}
    # Identical pixels across classes (dataset README, issue 1).
    assert where["benign/benign (433).png"] == where["malignant/malignant (145).png"]
    assert where["benign/benign (437).png"] == where["normal/normal (34).png"]


@pytest.fixture(scope="module")
def recomputed(busi):
    records = read_manifest(busi)
    return records, duplicate_groups(busi, records)


def test_recomputed_similarity_groups_never_cross_the_committed_split(recomputed):
    records, groups = recomputed
    where = split_of(committed())
    by_group: dict[int, set[str]] = {}
    for record, group in zip(records, groups, strict=True):
        by_group.setdefault(group, set()).add(where[record.path])
    assert all(len(splits) == 1 for splits in by_group.values())


def test_the_split_is_stratified_and_reproducible(recomputed):
    records, groups = recomputed
    split = make_split(records, groups)
    assert {name: split[name] for name in SPLITS} == {
        name: committed()[name] for name in SPLITS
    }
    label = {r.path: r.label for r in records}
    for name, share in (("train", 0.70), ("val", 0.15), ("test", 0.15)):
        for cls in ("normal", "benign", "malignant"):
            total = sum(1 for r in records if r.label == cls)
            count = sum(1 for p in split[name] if label[p] == cls)
            assert abs(count / total - share) < 0.05, (name, cls, count, total)


def test_multiple_masks_are_combined_with_or(busi):
    record = next(r for r in read_manifest(busi) if r.path == "benign/benign (195).png")
    assert len(record.mask_paths) == 3
    masks = []
    for mask_path in record.mask_paths:
        with Image.open(busi / mask_path) as image:
            masks.append(np.asarray(image.convert("L")) > 0)
    assert np.array_equal(load_mask(busi, record), masks[0] | masks[1] | masks[2])

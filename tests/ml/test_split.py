from __future__ import annotations

import json

import pytest

from ml.training.sources import SOURCES, read_manifest
from ml.training.splits import (
    GROUP_LABEL_POLICY,
    SPLITS,
    duplicate_groups,
    make_split,
    source_groups,
    split_path,
)


def committed(source: str) -> dict:
    return json.loads(split_path(source).read_text())


def split_of(payload: dict) -> dict[str, str]:
    return {path: name for name in SPLITS for path in payload[name]}


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_each_committed_split_has_disjoint_parts(source):
    payload = committed(source)
    sets = [set(payload[name]) for name in SPLITS]
    assert all(sets)
    assert sum(len(s) for s in sets) == len(set().union(*sets))


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_no_recorded_group_crosses_splits(source):
    payload = committed(source)
    where = split_of(payload)
    for group in payload["groups"]:
        assert len({where[path] for path in group}) == 1, group


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_the_split_covers_every_used_image_and_no_patient_crosses_it(
    all_sources, source
):
    where = split_of(committed(source))
    records = read_manifest(source, all_sources[source])
    used = [r for r in records if r.excluded is None]
    assert set(where) == {r.path for r in used}
    assert not {r.path for r in records if r.excluded} & set(where)
    by_patient: dict[str, set[str]] = {}
    for record in used:
        if record.patient:
            by_patient.setdefault(record.patient, set()).add(where[record.path])
    assert all(len(parts) == 1 for parts in by_patient.values())


def test_busi_known_cross_class_duplicates_stay_together(busi):
    where = split_of(committed("busi"))
    # Identical pixels across classes (dataset README).
    assert where["benign/benign (433).png"] == where["malignant/malignant (145).png"]
    assert where["benign/benign (437).png"] == where["normal/normal (34).png"]


@pytest.fixture(scope="module")
def busi_groups(busi):
    records = read_manifest("busi", busi)
    return records, duplicate_groups(busi, records)


def test_recomputed_busi_similarity_groups_never_cross_the_committed_split(busi_groups):
    records, groups = busi_groups
    where = split_of(committed("busi"))
    by_group: dict[int, set[str]] = {}
    for record, group in zip(records, groups, strict=True):
        by_group.setdefault(group, set()).add(where[record.path])
    assert all(len(parts) == 1 for parts in by_group.values())


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_every_split_is_reproducible_and_stratified(all_sources, source):
    records = [
        r for r in read_manifest(source, all_sources[source]) if r.excluded is None
    ]
    groups = source_groups(source, all_sources[source], records)
    split = make_split(
        records, groups, group_label=GROUP_LABEL_POLICY.get(source, "worst")
    )
    assert split == {name: committed(source)[name] for name in SPLITS}
    label = {r.path: r.label for r in records}
    if source == "bus-uclm":
        # 38 patients, whole patients move: image shares are coarse, so the guarantee is
        # that every part holds lesions of both kinds from at least two patients.
        patient = {r.path: r.patient for r in records}
        for name in SPLITS:
            for cls in ("benign", "malignant"):
                patients = {patient[p] for p in split[name] if label[p] == cls}
                assert len(patients) >= 2, (name, cls, patients)
        return
    for cls in ("benign", "malignant"):
        total = sum(1 for r in records if r.label == cls)
        for name, share in (("train", 0.70), ("val", 0.15), ("test", 0.15)):
            count = sum(1 for p in split[name] if label[p] == cls)
            assert abs(count / total - share) < 0.05, (source, name, cls, count)

"""Group-aware, stratified train/val/test splits, one committed file per source.

A group is what must never be divided between training and test: a patient where the
source names one (BUS-UCLM has up to ~25 near-identical images per patient), and for BUSI,
which names no patients, the images that show the same scan (exact and near duplicates, some
across classes), found by pixel hashes, the shipped candidate pairs and thumbnail similarity.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from ml.config import CLASSES, SPLIT_DIR
from ml.training.sources import SOURCES, Record, read_manifest

logger = logging.getLogger(__name__)

# Pairs BUSI's README lists as the same scan although below the candidate threshold.
KNOWN_SAME_SCAN = (
    ("benign/benign (85).png", "malignant/malignant (52).png"),
    ("benign/benign (333).png", "malignant/malignant (77).png"),
    ("benign/benign (406).png", "malignant/malignant (94).png"),
)
THUMB_SIZE = 48
CORRELATION_THRESHOLD = 0.97
DHASH_THRESHOLD = 24
DHASH_CORRELATION_FLOOR = 0.93
SPLITS = ("train", "val", "test")
DEFAULT_SEED = 20261129


def split_path(source: str) -> Path:
    return SPLIT_DIR / f"{source}.json"


def _thumbnail_features(
    root: Path, records: list[Record]
) -> tuple[np.ndarray, np.ndarray]:
    """Zero-mean unit-norm 48x48 grey thumbnails and 256-bit difference hashes."""
    thumbs, hashes = [], []
    for record in records:
        with Image.open(root / record.path) as image:
            grey = image.convert("L")
            thumb = np.asarray(
                grey.resize((THUMB_SIZE, THUMB_SIZE), Image.BILINEAR), dtype=np.float64
            )
            small = np.asarray(grey.resize((17, 16), Image.BILINEAR), dtype=np.int16)
        thumb = thumb - thumb.mean()
        thumbs.append(thumb.ravel() / (np.linalg.norm(thumb) + 1e-9))
        hashes.append((small[:, 1:] > small[:, :-1]).ravel())
    return np.asarray(thumbs), np.asarray(hashes)


class _UnionFind:
    def __init__(self, size: int) -> None:
        self.parent = list(range(size))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)


def duplicate_groups(root: Path, records: list[Record]) -> list[int]:
    """A group id per BUSI record; records of one group show the same scan.

    Joined: identical decoded pixels, the shipped candidate pairs, the README's visually
    confirmed pairs, and pairs whose 48x48 thumbnails correlate >= 0.97 or whose difference
    hashes are within 24 bits while still correlating >= 0.93.
    """
    index = {record.path: i for i, record in enumerate(records)}
    groups = _UnionFind(len(records))

    by_pixels: dict[str, int] = {}
    for i, record in enumerate(records):
        if record.pixel_sha256 in by_pixels:
            groups.union(i, by_pixels[record.pixel_sha256])
        by_pixels.setdefault(record.pixel_sha256, i)

    candidates = root / "NEAR_DUPLICATE_CANDIDATES.csv"
    pairs: list[tuple[str, str]] = list(KNOWN_SAME_SCAN)
    if candidates.is_file():
        with candidates.open(newline="") as handle:
            pairs += [
                (row["image_a"], row["image_b"]) for row in csv.DictReader(handle)
            ]
    for a, b in pairs:
        if a in index and b in index:
            groups.union(index[a], index[b])

    thumbs, hashes = _thumbnail_features(root, records)
    correlation = thumbs @ thumbs.T
    hamming = (hashes[:, None, :] != hashes[None, :, :]).sum(-1)
    similar = (correlation >= CORRELATION_THRESHOLD) | (
        (hamming <= DHASH_THRESHOLD) & (correlation >= DHASH_CORRELATION_FLOOR)
    )
    for a, b in zip(*np.nonzero(np.triu(similar, k=1)), strict=True):
        groups.union(int(a), int(b))

    roots = [groups.find(i) for i in range(len(records))]
    renumber = {r: n for n, r in enumerate(dict.fromkeys(roots))}
    return [renumber[r] for r in roots]


def patient_groups(records: list[Record]) -> list[int]:
    ids: dict[str, int] = {}
    return [
        ids.setdefault(record.patient or record.path, len(ids)) for record in records
    ]


def source_groups(source: str, root: Path, records: list[Record]) -> list[int]:
    if all(record.patient for record in records):
        return patient_groups(records)
    return duplicate_groups(root, records)


def make_split(
    records: list[Record],
    groups: list[int],
    *,
    seed: int = DEFAULT_SEED,
    test_fraction: float = 0.15,
    val_fraction: float = 0.15,
    group_label: str = "majority",
) -> dict[str, list[str]]:
    """Stratified, group-aware train/val/test split.

    Each group is labelled by its most frequent class (``majority``; malignant wins ties,
    then benign) or by the most serious class it contains (``worst``: a patient with one
    malignant image among twenty normal ones counts as malignant, so the few malignant
    patients spread over the splits). Whole groups are dealt to the splits class by class,
    largest first, so each split gets its share of every class and no group crosses splits.
    """
    if group_label not in ("majority", "worst"):
        raise ValueError(
            f"group_label must be 'majority' or 'worst', not {group_label!r}"
        )
    rng = np.random.default_rng(seed)
    members: dict[int, list[int]] = {}
    for i, group in enumerate(groups):
        members.setdefault(group, []).append(i)

    def label_of(ids: list[int]) -> int:
        counts = np.bincount(
            [records[i].class_index for i in ids], minlength=len(CLASSES)
        )
        if group_label == "worst":
            return int(np.nonzero(counts)[0].max())
        return int(max(range(len(CLASSES)), key=lambda c: (counts[c], c)))

    split_names = ("test", "val", "train")
    fractions = {
        "test": test_fraction,
        "val": val_fraction,
        "train": 1 - test_fraction - val_fraction,
    }
    split: dict[str, list[str]] = {name: [] for name in split_names}
    for class_index in range(len(CLASSES)):
        class_groups = [ids for ids in members.values() if label_of(ids) == class_index]
        order = rng.permutation(len(class_groups))
        class_groups = sorted((class_groups[i] for i in order), key=len, reverse=True)
        total = sum(len(ids) for ids in class_groups)
        filled = dict.fromkeys(split_names, 0)
        for ids in class_groups:
            # The split furthest below its target share takes the group.
            name = min(
                split_names,
                key=lambda s: (
                    (filled[s] - fractions[s] * total) / max(fractions[s], 1e-9)
                ),
            )
            filled[name] += len(ids)
            split[name].extend(records[i].path for i in ids)
    return {name: sorted(split[name]) for name in SPLITS}


# BUSI keeps the policy its committed split was made with; the patient-split sources are
# dealt by their most serious class (see make_split).
GROUP_LABEL_POLICY = {"busi": "majority"}


def build_split_file(
    source: str, out_path: Path | None = None, *, seed: int = DEFAULT_SEED
) -> dict[str, list[str]]:
    root = SOURCES[source].root()
    all_records = read_manifest(source, root)
    records = [r for r in all_records if r.excluded is None]
    groups = source_groups(source, root, records)
    split = make_split(
        records,
        groups,
        seed=seed,
        group_label=GROUP_LABEL_POLICY.get(source, "worst"),
    )
    payload = {
        **split,
        "groups": [
            sorted(r.path for r, g in zip(records, groups, strict=True) if g == group)
            for group in sorted(set(groups))
            if groups.count(group) > 1
        ],
        "excluded": {r.path: r.excluded for r in all_records if r.excluded},
        "seed": seed,
    }
    out_path = out_path or split_path(source)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(payload, indent=1) + "\n")
    logger.info(
        "%s split written: %s (train %d, val %d, test %d, %d groups, %d excluded)",
        source,
        out_path,
        *(len(split[name]) for name in SPLITS),
        len(payload["groups"]),
        len(payload["excluded"]),
    )
    return split


def load_split(source_or_path: str | Path) -> dict[str, list[str]]:
    path = (
        split_path(source_or_path)
        if isinstance(source_or_path, str) and source_or_path in SOURCES
        else Path(source_or_path)
    )
    payload = json.loads(path.read_text())
    return {name: payload[name] for name in SPLITS}

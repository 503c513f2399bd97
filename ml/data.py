"""The BUSI dataset: records, combined lesion masks, duplicate groups and the committed split.

BUSI (Al-Dhabyani et al., Data in Brief 2020) has exact and near-duplicate images, some
across classes. Duplicates are grouped by image similarity before splitting so that no
scan is seen in training and scored in test.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ml.config import CLASSES

logger = logging.getLogger(__name__)

# Pairs the dataset README lists as the same scan although below the candidate threshold.
KNOWN_SAME_SCAN = (
    ("benign/benign (85).png", "malignant/malignant (52).png"),
    ("benign/benign (333).png", "malignant/malignant (77).png"),
    ("benign/benign (406).png", "malignant/malignant (94).png"),
)
THUMB_SIZE = 48
CORRELATION_THRESHOLD = 0.97
DHASH_THRESHOLD = 24
DHASH_CORRELATION_FLOOR = 0.93


@dataclass(frozen=True)
class Record:
    path: str  # relative to the dataset root
    label: str
    mask_paths: tuple[str, ...]
    pixel_sha256: str

    @property
    def class_index(self) -> int:
        return CLASSES.index(self.label)


def read_manifest(root: Path) -> list[Record]:
    manifest = root / "MANIFEST.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"BUSI manifest not found: {manifest}")
    with manifest.open(newline="") as handle:
        return [
            Record(
                path=row["path"],
                label=row["class"],
                mask_paths=tuple(p for p in row["mask_paths"].split(";") if p),
                pixel_sha256=row["rgb_pixel_sha256"],
            )
            for row in csv.DictReader(handle)
        ]


def load_image(root: Path, record: Record) -> np.ndarray:
    with Image.open(root / record.path) as image:
        return np.asarray(image.convert("RGB"))


def load_mask(root: Path, record: Record) -> np.ndarray:
    """All of the image's lesion masks combined with a per-pixel OR, as bool (H, W)."""
    combined = None
    for mask_path in record.mask_paths:
        with Image.open(root / mask_path) as mask_image:
            mask = np.asarray(mask_image.convert("L")) > 0
        combined = mask if combined is None else combined | mask
    if combined is None:
        raise ValueError(f"{record.path}: no mask files listed")
    return combined


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
    """A group id per record; records of one group show the same scan.

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


def make_split(
    records: list[Record],
    groups: list[int],
    *,
    seed: int = 20261129,
    test_fraction: float = 0.15,
    val_fraction: float = 0.15,
) -> dict[str, list[str]]:
    """Stratified, group-aware train/val/test split.

    Each group is labelled by its most frequent class (malignant wins ties, then benign) and
    whole groups are dealt to the splits class by class, largest first, so each split gets its
    share of every class and no group crosses splits.
    """
    rng = np.random.default_rng(seed)
    members: dict[int, list[int]] = {}
    for i, group in enumerate(groups):
        members.setdefault(group, []).append(i)

    def group_label(ids: list[int]) -> int:
        counts = np.bincount(
            [records[i].class_index for i in ids], minlength=len(CLASSES)
        )
        return int(max(range(len(CLASSES)), key=lambda c: (counts[c], c)))

    split_names = ("test", "val", "train")
    fractions = {
        "test": test_fraction,
        "val": val_fraction,
        "train": 1 - test_fraction - val_fraction,
    }
    split: dict[str, list[str]] = {name: [] for name in split_names}
    for class_index in range(len(CLASSES)):
        class_groups = [
            ids for ids in members.values() if group_label(ids) == class_index
        ]
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
    return {name: sorted(split[name]) for name in ("train", "val", "test")}


def build_split_file(
    root: Path, out_path: Path, *, seed: int = 20261129
) -> dict[str, list[str]]:
    records = read_manifest(root)
    groups = duplicate_groups(root, records)
    split = make_split(records, groups, seed=seed)
    payload = {
        **split,
        "groups": [
            sorted(
                record.path
                for record, group in zip(records, groups, strict=True)
                if group == g
            )
            for g in sorted(set(groups))
            if groups.count(g) > 1
        ],
        "seed": seed,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(payload, indent=1) + "\n")
    logger.info(
        "split written: %s (train %d, val %d, test %d, %d duplicate groups)",
        out_path,
        len(split["train"]),
        len(split["val"]),
        len(split["test"]),
        len(payload["groups"]),
    )
    return split


def load_split(path: Path) -> dict[str, list[str]]:
    payload = json.loads(Path(path).read_text())
    return {name: payload[name] for name in ("train", "val", "test")}


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """RGB uint8 (H, W, 3) to (size, size, 3); the whole field of view is kept (no crop)."""
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize(
        (size, size), Image.BILINEAR
    )
    return np.asarray(resized) >= 128


@dataclass
class ArraySet:
    paths: list[str]
    images: np.ndarray  # (N, S, S, 3) uint8
    masks: np.ndarray  # (N, S, S) bool
    labels: np.ndarray  # (N,) int class index


def load_arrays(
    root: Path, paths: list[str], size: int, cache_dir: Path | None = None
) -> ArraySet:
    """Images and combined masks resized to ``size``, cached as one .npz per (size, file list)."""
    records = {record.path: record for record in read_manifest(root)}
    unknown = [p for p in paths if p not in records]
    if unknown:
        raise KeyError(f"not in the BUSI manifest: {unknown[:3]}")
    key = hashlib.sha256(("\n".join(paths) + f"|{size}").encode()).hexdigest()[:16]
    cache = cache_dir / f"busi_{size}_{key}.npz" if cache_dir else None
    if cache and cache.is_file():
        with np.load(cache) as archive:
            return ArraySet(
                list(paths), archive["images"], archive["masks"], archive["labels"]
            )
    images = np.empty((len(paths), size, size, 3), np.uint8)
    masks = np.empty((len(paths), size, size), bool)
    labels = np.empty(len(paths), np.int64)
    for i, path in enumerate(paths):
        record = records[path]
        images[i] = resize_image(load_image(root, record), size)
        masks[i] = resize_mask(load_mask(root, record), size)
        labels[i] = record.class_index
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, images=images, masks=masks, labels=labels)
    return ArraySet(list(paths), images, masks, labels)

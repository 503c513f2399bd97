"""Decoded, resized images and masks of a split, cached once as ``.npz`` per source.

Decoding ~1,700 JPEG/PNG files takes minutes on two cores; every training run, LOSO fold and
evaluation reads the cache instead.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ml.config import REPO_DIR
from ml.training.sources import (
    get_source,
    load_image,
    load_mask,
    read_manifest,
)
from ml.training.splits import split_path

DEFAULT_CACHE_DIR = REPO_DIR / "var" / "cache"


@dataclass
class ArraySet:
    keys: list[str]  # "<source>/<path>"
    images: np.ndarray  # (N, S, S, 3) uint8 RGB
    masks: np.ndarray  # (N, S, S) bool
    labels: np.ndarray  # (N,) class index
    sources: np.ndarray  # (N,) source name
    groups: np.ndarray = field(
        default=None
    )  # (N,) what a bootstrap resamples: patient or duplicate group
    seg_known: np.ndarray = field(
        default=None
    )  # (N,) bool: False where no outline is known (classification only)

    def __post_init__(self) -> None:
        if self.seg_known is None:
            self.seg_known = np.ones(len(self.keys), bool)

    def __len__(self) -> int:
        return len(self.keys)

    def select(self, keep: np.ndarray) -> ArraySet:
        keep = np.asarray(keep)
        return ArraySet(
            [k for k, kept in zip(self.keys, keep, strict=True) if kept],
            self.images[keep],
            self.masks[keep],
            self.labels[keep],
            self.sources[keep],
            self.groups[keep],
            self.seg_known[keep],
        )


def concatenate(sets: list[ArraySet]) -> ArraySet:
    return ArraySet(
        [key for s in sets for key in s.keys],
        np.concatenate([s.images for s in sets]),
        np.concatenate([s.masks for s in sets]),
        np.concatenate([s.labels for s in sets]),
        np.concatenate([s.sources for s in sets]),
        np.concatenate([s.groups for s in sets]),
        np.concatenate([s.seg_known for s in sets]),
    )


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """RGB uint8 (H, W, 3) to (size, size, 3); the whole field of view is kept (no crop)."""
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize(
        (size, size), Image.BILINEAR
    )
    return np.asarray(resized) >= 128


def group_names(source: str, paths: list[str], records: dict) -> list[str]:
    """Patient where the source names one, else the BUSI duplicate group of the split file."""
    if all(records[p].patient for p in paths):
        return [f"{source}:{records[p].patient}" for p in paths]
    group_of: dict[str, str] = {}
    committed = split_path(source)
    if committed.is_file():
        for n, members in enumerate(
            json.loads(committed.read_text()).get("groups", [])
        ):
            group_of.update(dict.fromkeys(members, f"{source}:group{n}"))
    return [group_of.get(p, f"{source}:{p}") for p in paths]


def load_arrays(
    source: str, paths: list[str], size: int, cache_dir: Path | None = DEFAULT_CACHE_DIR
) -> ArraySet:
    """Images and OR-combined masks of ``paths`` (relative to the source root) at ``size``."""
    root = get_source(source).root()
    records = {record.path: record for record in read_manifest(source, root)}
    unknown = [p for p in paths if p not in records]
    if unknown:
        raise KeyError(f"not in the {source} manifest: {unknown[:3]}")
    key = hashlib.sha256(("\n".join(paths) + f"|{size}").encode()).hexdigest()[:16]
    cache = cache_dir / f"{source}_{size}_{key}.npz" if cache_dir else None
    if cache and cache.is_file():
        with np.load(cache) as archive:
            images, masks, labels = (
                archive["images"],
                archive["masks"],
                archive["labels"],
            )
    else:
        images = np.empty((len(paths), size, size, 3), np.uint8)
        masks = np.empty((len(paths), size, size), bool)
        labels = np.empty(len(paths), np.int64)
        for i, path in enumerate(paths):
            record = records[path]
            image = load_image(root, record)
            images[i] = resize_image(image, size)
            masks[i] = resize_mask(
                load_mask(root, record, (image.shape[1], image.shape[0])), size
            )
            labels[i] = record.class_index
        if cache:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, images=images, masks=masks, labels=labels)
    return ArraySet(
        [f"{source}/{p}" for p in paths],
        images,
        masks,
        labels,
        np.array([source] * len(paths)),
        np.array(group_names(source, paths, records)),
        np.array([records[p].has_segmentation for p in paths], bool),
    )


def load_split_arrays(
    sources: list[str],
    part: str,
    size: int,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    *,
    whole: bool = False,
) -> ArraySet:
    """One split part (``train``/``val``/``test``) of several sources, or every used image (``whole``)."""
    from ml.training.splits import SPLITS, load_split

    sets = []
    for source in sources:
        split = load_split(source)
        paths = (
            sorted(p for name in SPLITS for p in split[name]) if whole else split[part]
        )
        sets.append(load_arrays(source, paths, size, cache_dir))
    return concatenate(sets)

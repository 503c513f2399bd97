"""The training sources: where each dataset lies and one reader for all their manifests.

Each source ships a ``MANIFEST.csv`` (see its README under ``shared/data/<name>/``). The
columns differ a little: BUSI lists several mask files per image and has no patient column
(its duplicate groups are computed in :mod:`ml.training.splits`); BUS-UCLM and
BrEaST-Lesions_USG name the patient, and BUS-UCLM flags colour-Doppler and side-by-side
images, which are not used (see the model card).

A site's own source (the portal's ``export_training_set``: the same layout, with
``label_origin`` and ``segmentation`` columns) is read by the same reader once registered
by path with :func:`register_source`. Its rows with ``segmentation`` ``none`` have no
outline: they train the classifier only.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ml.config import CLASSES, dataset_dir


@dataclass(frozen=True)
class Source:
    name: str
    env_var: str
    country: str
    licence: str
    citation: str
    path: Path | None = None  # an external source registered by path

    def root(self) -> Path:
        if self.path is not None:
            return self.path
        return dataset_dir(self.name, self.env_var)


SOURCES: dict[str, Source] = {
    source.name: source
    for source in (
        Source(
            "busi",
            "BUSI_DIR",
            "Egypt",
            "CC0 1.0",
            "Al-Dhabyani W, et al. Dataset of breast ultrasound images. Data in Brief 28 (2020)",
        ),
        Source(
            "bus-uclm",
            "BUS_UCLM_DIR",
            "Spain",
            "CC BY-NC 4.0 (non-commercial)",
            "Vallez N, et al. BUS-UCLM. Scientific Data 12:242 (2025)",
        ),
        Source(
            "breast-lesions-usg",
            "BREAST_LESIONS_USG_DIR",
            "Poland",
            "CC BY 4.0",
            "Pawlowska A, et al. Curated benchmark dataset for ultrasound based breast "
            "lesion analysis. Scientific Data (2024)",
        ),
    )
}


# Sources registered by path (a site's export): kept apart from SOURCES, which stays
# the original training sources every default ("all sources") means.
REGISTERED: dict[str, Source] = {}


@dataclass(frozen=True)
class Record:
    source: str
    path: str  # relative to the source's root
    label: str
    mask_paths: tuple[str, ...]
    patient: str | None  # None where the source does not say (BUSI)
    excluded: str | None = None  # why the image is not used, e.g. "colour Doppler"
    pixel_sha256: str | None = None
    pixel_size_mm: float | None = None
    # False: no outline is known (a site row whose reader signed none); the image
    # trains the classifier only and is left out of Dice.
    has_segmentation: bool = True
    label_origin: str | None = None  # site sources: "reader" or "pathology"

    @property
    def class_index(self) -> int:
        return CLASSES.index(self.label)

    @property
    def key(self) -> str:
        """Unique across sources: ``<source>/<path>``."""
        return f"{self.source}/{self.path}"


def _yes(value: str | None) -> bool:
    return (value or "").strip().lower() in {"yes", "y", "true", "1"}


def _exclusion(row: dict[str, str]) -> str | None:
    if _yes(row.get("doppler")):
        return "colour Doppler overlay"
    if _yes(row.get("combined")):
        return "two views side by side"
    return None


def _pixel_size_mm(value: str | None) -> float | None:
    # BrEaST-Lesions_USG gives centimetres per pixel (see its README).
    try:
        return float(value) * 10.0 if value else None
    except ValueError:
        return None


def register_source(path: Path, name: str | None = None) -> str:
    """Make a folder in the export format (``MANIFEST.csv``, ``images/``, ``masks/``) a
    source the readers, splits and training know by name; returns the name."""
    root = Path(path).resolve()
    if not (root / "MANIFEST.csv").is_file():
        raise FileNotFoundError(f"no MANIFEST.csv in {root}")
    name = name or f"site-{root.name}"
    if name in SOURCES:
        raise ValueError(f"source name {name!r} is one of the original sources")
    REGISTERED[name] = Source(
        name, "", "", "the site's own", f"site export {root}", root
    )
    return name


def get_source(name: str) -> Source:
    """An original source, or one registered by path."""
    found = SOURCES.get(name) or REGISTERED.get(name)
    if found is None:
        known = sorted(SOURCES) + sorted(REGISTERED)
        raise KeyError(f"unknown source {name!r}; known: {known}")
    return found


def read_manifest(source: str, root: Path | None = None) -> list[Record]:
    """Every row of a source's manifest as a :class:`Record`."""
    root = root or get_source(source).root()
    manifest = root / "MANIFEST.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"{source} manifest not found: {manifest}")
    records = []
    with manifest.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["class"] not in CLASSES:
                raise ValueError(
                    f"{manifest}: {row['path']} has unknown class {row['class']!r}"
                )
            masks = row.get("mask_paths") or row.get("mask_path") or ""
            records.append(
                Record(
                    source=source,
                    path=row["path"],
                    label=row["class"],
                    mask_paths=tuple(p for p in masks.split(";") if p),
                    patient=row.get("patient") or None,
                    excluded=_exclusion(row),
                    pixel_sha256=row.get("rgb_pixel_sha256") or None,
                    pixel_size_mm=_pixel_size_mm(row.get("pixel_size")),
                    has_segmentation=(row.get("segmentation") or "").strip() != "none",
                    label_origin=row.get("label_origin") or None,
                )
            )
    return records


def load_image(root: Path, record: Record) -> np.ndarray:
    """RGB uint8 (H, W, 3)."""
    with Image.open(root / record.path) as image:
        return np.asarray(image.convert("RGB"))


def load_mask(root: Path, record: Record, size: tuple[int, int]) -> np.ndarray:
    """The image's lesion masks OR-combined as bool (H, W); all False for a normal image.

    ``size`` is the image's (width, height): a mask of another size is resized with
    nearest-neighbour so that it lines up.
    """
    combined = np.zeros(size[::-1], bool)
    for mask_path in record.mask_paths:
        with Image.open(root / mask_path) as mask_image:
            mask_image = mask_image.convert("L")
            if mask_image.size != size:
                mask_image = mask_image.resize(size, Image.NEAREST)
            combined |= np.asarray(mask_image) > 0
    if record.label != "normal" and not record.mask_paths and record.has_segmentation:
        raise ValueError(f"{record.key}: a {record.label} image without a mask file")
    return combined

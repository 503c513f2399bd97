"""Constants shared by training, evaluation and inference."""

from __future__ import annotations

import os
from pathlib import Path

CLASSES: tuple[str, ...] = ("normal", "benign", "malignant")
IMAGE_SIZE = 256
# What the class head pools (ml.model): "global", the spatial mean of the last encoder
# features; "lesion", also their mean weighted by the predicted lesion probability.
CLASS_HEADS: tuple[str, ...] = ("global", "lesion")
MODEL_NAME = "busnet-lite0"

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
DEFAULT_WEIGHTS_DIR = PACKAGE_DIR / "weights"
SPLIT_DIR = PACKAGE_DIR / "splits"
REPORT_DIR = PACKAGE_DIR / "reports"
MODEL_CARD_PATH = PACKAGE_DIR / "MODEL_CARD.md"


def dataset_dir(name: str, env_var: str) -> Path:
    """A dataset's root: ``$<env_var>`` or ``../shared/data/<name>`` beside the repository."""
    return Path(os.environ.get(env_var, REPO_DIR.parent / "shared" / "data" / name))


def busi_dir() -> Path:
    return dataset_dir("busi", "BUSI_DIR")


def imagenet_weights_path() -> Path:
    default = REPO_DIR.parent / "shared" / "weights" / "efficientnet_lite0_imagenet"
    root = Path(os.environ.get("LITE0_WEIGHTS_DIR", default))
    return root / "efficientnet_lite0_imagenet.npz"


def weights_dir() -> Path:
    return Path(os.environ.get("ML_WEIGHTS_DIR", DEFAULT_WEIGHTS_DIR))

"""Constants shared by training, evaluation and inference."""

from __future__ import annotations

import os
from pathlib import Path

CLASSES: tuple[str, ...] = ("normal", "benign", "malignant")
IMAGE_SIZE = 256
# What the class head pools (ml.model): "global", the spatial mean of the last encoder
# features; "lesion", also their mean weighted by the predicted lesion probability.
CLASS_HEADS: tuple[str, ...] = ("global", "lesion")
# The encoders ml.backbone builds (its BACKBONES, named here so that code reading model.json
# need not import Keras) and the default; a model's name says which it was built on.
BACKBONE_NAMES: tuple[str, ...] = ("lite0", "lite2")
BACKBONE = "lite0"


def model_name(backbone: str = BACKBONE) -> str:
    return f"busnet-{backbone}"


MODEL_NAME = model_name()


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


def imagenet_weights_path(backbone: str = BACKBONE) -> Path:
    """The ImageNet archive of ``backbone``: ``$LITE0_WEIGHTS_DIR`` (``$LITE2_WEIGHTS_DIR``)
    or ``../shared/weights/efficientnet_<backbone>_imagenet`` beside the repository."""
    stem = f"efficientnet_{backbone}_imagenet"
    default = REPO_DIR.parent / "shared" / "weights" / stem
    root = Path(os.environ.get(f"{backbone.upper()}_WEIGHTS_DIR", default))
    return root / f"{stem}.npz"


def weights_dir() -> Path:
    return Path(os.environ.get("ML_WEIGHTS_DIR", DEFAULT_WEIGHTS_DIR))

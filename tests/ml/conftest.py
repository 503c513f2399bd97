from __future__ import annotations

from pathlib import Path

import pytest

from ml.config import imagenet_weights_path
from ml.training.sources import SOURCES


def _source_root(name: str) -> Path:
    source = SOURCES[name]
    root = source.root()
    if not (root / "MANIFEST.csv").is_file():
        pytest.skip(
            f"{name} dataset not found at {root} "
            f"(set {source.env_var} to run tests that need its real scans)"
        )
    return root


@pytest.fixture(scope="session")
def busi() -> Path:
    return _source_root("busi")


@pytest.fixture(scope="session")
def all_sources() -> dict[str, Path]:
    return {name: _source_root(name) for name in SOURCES}


def _imagenet_archive(backbone: str) -> Path:
    path = imagenet_weights_path(backbone)
    if not path.is_file():
        pytest.skip(
            f"EfficientNet-{backbone.capitalize()} ImageNet weights not found at {path} "
            f"(set {backbone.upper()}_WEIGHTS_DIR)"
        )
    return path


@pytest.fixture(scope="session")
def imagenet_npz() -> Path:
    return _imagenet_archive("lite0")


@pytest.fixture(scope="session")
def imagenet_npz_lite2() -> Path:
    return _imagenet_archive("lite2")

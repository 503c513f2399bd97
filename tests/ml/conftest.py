from __future__ import annotations

from pathlib import Path

import pytest

from ml.config import busi_dir, imagenet_weights_path


@pytest.fixture(scope="session")
def busi() -> Path:
    root = busi_dir()
    if not (root / "MANIFEST.csv").is_file():
        pytest.skip(
            f"BUSI dataset not found at {root} (set BUSI_DIR to run tests that need real scans)"
        )
    return root


@pytest.fixture(scope="session")
def imagenet_npz() -> Path:
    path = imagenet_weights_path()
    if not path.is_file():
        pytest.skip(
            f"EfficientNet-Lite0 ImageNet weights not found at {path} (set LITE0_WEIGHTS_DIR)"
        )
    return path

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _isolated(
    media_root: Path, weights_dir: Path, enqueued: list[tuple[int, Any]]
) -> None:
    """Every portal test gets its own storage, a model.json, and no broker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _isolated(
    media_root: Path, weights_dir: Path, enqueued: list[tuple[int, Any]], settings: Any
) -> None:
    """Own storage, a model.json, no broker, and results recorded inline (the test's DB
    transaction is not visible to other threads; one test turns the threads on with a
    real commit)."""
    settings.ANALYSIS_RENDER_THREADS = 0

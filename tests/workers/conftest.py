from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _isolated(media_root: Path, weights_dir: Path, settings: Any) -> None:
    """Own storage, a model.json, and results recorded inline (the test's DB transaction
    is not visible to other threads; one test turns the threads on with a real commit)."""
    settings.ANALYSIS_RENDER_THREADS = 0


@pytest.fixture(autouse=True)
def enqueued(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, Any]]:
    """Analysis ids sent to the queue (nothing reaches a broker in these tests)."""
    sent: list[tuple[int, Any]] = []

    def record(analysis_id: int, *, countdown: float | None = None) -> None:
        sent.append((analysis_id, countdown))

    monkeypatch.setattr("portal.analyses.services.enqueue_analysis", record)
    return sent


@pytest.fixture
def patient(db: None) -> Any:
    from portal.clinical.services import patient_create

    return patient_create(identifier="H-0001", name="Jane Example")


@pytest.fixture
def study(patient: Any, user: Any) -> Any:
    from portal.clinical.services import study_create

    return study_create(patient=patient, created_by=user, accession_number="ACC1")

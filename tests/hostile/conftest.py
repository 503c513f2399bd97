from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _isolated(media_root: Path, weights_dir: Path) -> None:
    """Own storage and a model.json; nothing reaches a broker."""


@pytest.fixture(autouse=True)
def enqueued(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sent: list[int] = []
    monkeypatch.setattr(
        "portal.analyses.queue.send_analysis",
        lambda analysis_id, *, countdown=None: sent.append(analysis_id),
    )
    return sent


@pytest.fixture
def study(user: Any) -> Any:
    from portal.clinical.services import patient_create, study_create
    from tests.hostile.corpus import PATIENT_ID

    patient = patient_create(identifier=PATIENT_ID, name="Hostile Corpus")
    return study_create(patient=patient, created_by=user, accession_number="ACC-H")


@pytest.fixture
def uploader(client: Any, user: Any) -> Any:
    client.force_login(user)
    return client

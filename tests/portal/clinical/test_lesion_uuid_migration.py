"""Migration 0012 gives each lesion that exists already a UUID of its own (the DICOM SRs
derive the lesion's tracking UID from it), before making the column unique."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from portal.clinical.models import Lesion

BEFORE = [("clinical", "0011_lesion")]


def _migrate(target: list[tuple[str, str]] | None = None) -> Any:
    """Migrate to `target`, or (None) forward to every app's latest migration: what
    went back with clinical comes back whatever depends on it by then."""
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    target = target or executor.loader.graph.leaf_nodes()
    executor.migrate(target)
    return executor.loader.project_state(target).apps


@pytest.mark.django_db(transaction=True)
def test_existing_lesions_get_distinct_uuids(user: Any) -> None:
    apps = _migrate(BEFORE)
    try:
        patient = apps.get_model("clinical", "Patient").objects.create(
            identifier="M-0001", name="Migration Person"
        )
        study = apps.get_model("clinical", "Study").objects.create(
            patient=patient, created_by_id=user.pk
        )
        for label in ("A", "B"):
            apps.get_model("clinical", "Lesion").objects.create(
                study=study, label=label, created_by_id=user.pk
            )
    finally:
        _migrate()
    uuids = list(Lesion.objects.values_list("uuid", flat=True))
    assert len(uuids) == 2 and None not in uuids and len(set(uuids)) == 2

"""Which models django-auditlog follows: every create, change and delete of them is kept."""

from __future__ import annotations

from auditlog.registry import auditlog
from django.apps import apps


def register_models() -> None:
    for label in (
        "clinical.Patient",
        "clinical.Study",
        "clinical.Scan",
        "analyses.Analysis",
        "review.Review",
        "registry.SiteCalibration",
        "registry.CalibrationActivation",
    ):
        model = apps.get_model(label)
        if not auditlog.contains(model):
            auditlog.register(model)

"""Which models django-auditlog follows: every create, change and delete of them is kept."""

from __future__ import annotations

from auditlog.registry import auditlog
from django.apps import apps


def register_models() -> None:
    """The clinical records, and who may do what: accounts (superuser and staff flags,
    active, roles as groups, single permissions; the password only as "changed") and
    what each role's group permits. Group changes are many-to-many changes, recorded
    whoever makes them: the admin, a directory sign-in mirroring its groups, a command."""
    User = apps.get_model("auth", "User")
    if not auditlog.contains(User):
        auditlog.register(
            User,
            exclude_fields=["last_login"],
            mask_fields=["password"],
            m2m_fields={"groups", "user_permissions"},
        )
    Group = apps.get_model("auth", "Group")
    if not auditlog.contains(Group):
        auditlog.register(Group, m2m_fields={"permissions"})
    for label in (
        "clinical.Patient",
        "clinical.Study",
        "clinical.Scan",
        "clinical.Lesion",
        "analyses.Analysis",
        "review.Review",
        "registry.SiteCalibration",
        "registry.CalibrationActivation",
        "review.CalibrationFit",
        "registry.ModelVersion",
        "registry.ModelActivation",
        "registry.PromotionRequest",
    ):
        model = apps.get_model(label)
        if not auditlog.contains(model):
            auditlog.register(model)

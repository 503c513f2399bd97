from __future__ import annotations

from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.utils import timezone


class AccessRecord(models.Model):
    """Someone looked at or downloaded something: who, when, from where, what.

    Changes to records are kept by django-auditlog; this table holds reads, which no
    model signal sees. Rows are only ever inserted.
    """

    class Action(models.TextChoices):
        VIEW = "view"
        DOWNLOAD = "download"
        RETRY = "retry"
        # Results sent over DICOM to the configured PACS (by the system: no user).
        SEND = "send", "sent to PACS"
        SEND_FAILED = "send_failed", "sending to PACS failed"

    at = models.DateTimeField(default=timezone.now, db_index=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        related_name="+",
    )
    # Kept as text too, so the record still says who after the account is deleted.
    username = models.CharField(max_length=150)
    client_address = models.GenericIPAddressField(null=True, blank=True)
    action = models.CharField(max_length=16, choices=Action.choices)
    content_type = models.ForeignKey(
        ContentType, on_delete=models.PROTECT, related_name="+"
    )
    object_id = models.CharField(max_length=64)
    # What exactly: "page", "original", "overlay", "report", ...
    detail = models.CharField(max_length=32, blank=True)
    path = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ("-at", "-id")
        indexes = (
            models.Index(fields=("content_type", "object_id"), name="access_object"),
        )

    def __str__(self) -> str:
        return (
            f"{self.username} {self.action} {self.content_type.model} {self.object_id}"
        )

"""Recording reads: every view of a study or scan page and every file that leaves storage."""

from __future__ import annotations

import logging

from auditlog.diff import model_instance_diff
from auditlog.models import LogEntry
from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.http import HttpRequest

from portal.audit.models import AccessRecord
from portal.clientaddress import client_address

logger = logging.getLogger(__name__)

Action = AccessRecord.Action


def record_access(
    request: HttpRequest,
    target: models.Model,
    *,
    action: str,
    detail: str = "",
) -> AccessRecord:
    user = request.user if request.user.is_authenticated else None
    return AccessRecord.objects.create(
        user=user,
        username=user.get_username() if user else "",
        client_address=client_address(request),
        action=action,
        content_type=ContentType.objects.get_for_model(target),
        object_id=str(target.pk),
        detail=detail[:32],
        path=request.path[:255],
    )


def audit_update(before: models.Model, after: models.Model) -> None:
    """The change record django-auditlog keeps for a save, for rows written in bulk.

    `QuerySet.bulk_update` sends no signals, so a service that writes many rows at once
    (a worker storing a batch) records each row's change here from the copy it read
    before changing it: the same entry auditlog would write, without its query per row.
    """
    changes = model_instance_diff(
        before, after, use_json_for_changes=settings.AUDITLOG_STORE_JSON_CHANGES
    )
    if changes:
        LogEntry.objects.log_create(
            after, action=LogEntry.Action.UPDATE, changes=changes
        )

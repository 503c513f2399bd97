"""Recording reads: every page, API answer or admin page that shows patient data, and
every file that leaves storage. A list is recorded row by row in one insert."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from auditlog.cid import get_cid
from auditlog.diff import model_instance_diff
from auditlog.models import DEFAULT_OBJECT_REPR, LogEntry
from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ObjectDoesNotExist
from django.db import models
from django.db.models.signals import pre_save
from django.http import HttpRequest
from django.utils.encoding import smart_str

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
    return AccessRecord.objects.create(
        **_reader(request),
        action=action,
        content_type=ContentType.objects.get_for_model(target),
        object_id=str(target.pk),
        detail=detail[:32],
    )


def record_accesses(
    request: HttpRequest,
    targets: Iterable[models.Model],
    *,
    action: str = Action.VIEW,
    detail: str = "",
) -> int:
    """One access record per row shown (a list page, a search, an API page), written
    in a single insert. Returns how many were written."""
    rows = [target for target in targets if target is not None and target.pk]
    if not rows:
        return 0
    reader = _reader(request)
    types = ContentType.objects.get_for_models(*{type(row) for row in rows})
    AccessRecord.objects.bulk_create(
        [
            AccessRecord(
                **reader,
                action=action,
                content_type=types[type(row)],
                object_id=str(row.pk),
                detail=detail[:32],
            )
            for row in rows
        ]
    )
    return len(rows)


def _reader(request: HttpRequest) -> dict[str, Any]:
    """Who read, from where and through which path: the fields of this request's
    access records."""
    user = request.user if request.user.is_authenticated else None
    return {
        "user": user,
        "username": user.get_username() if user else "",
        "client_address": client_address(request),
        "path": request.path[:255],
    }


def audit_update(before: models.Model, after: models.Model) -> None:
    """The change record django-auditlog keeps for a save, for rows written in bulk.

    `QuerySet.bulk_update` sends no signals, so a service that writes many rows at once
    (a worker storing a batch) records each row's change here from the copy it read
    before changing it: the same entry auditlog would write, without its query per row.
    """
    audit_updates([(before, after)])


def audit_updates(
    pairs: Iterable[tuple[models.Model, models.Model]],
    *,
    fields: Sequence[str] | None = None,
) -> int:
    """`audit_update` for many rows, written in one insert; returns how many entries.

    Each entry is what `LogEntry.objects.log_create` would save (it is asked to build
    it), and the pre_save signal auditlog's context managers listen to (actor, remote
    address, extra data) is sent for each, as a save would. With `fields` (the columns
    the caller writes) the entry is the one auditlog makes for
    ``save(update_fields=fields)``: only those fields are compared.
    """
    entries: list[LogEntry] = []
    for before, after in pairs:
        changes = model_instance_diff(
            before,
            after,
            fields_to_check=fields,
            use_json_for_changes=settings.AUDITLOG_STORE_JSON_CHANGES,
        )
        if changes:
            entries.append(_log_entry(after, changes))
    if not entries:
        return 0
    for entry in entries:
        pre_save.send(
            sender=LogEntry,
            instance=entry,
            raw=False,
            using="default",
            update_fields=None,
        )
    LogEntry.objects.bulk_create(entries)
    return len(entries)


def _log_entry(instance: models.Model, changes: dict[str, Any]) -> LogEntry:
    """The unsaved LogEntry `LogEntry.objects.log_create` saves for an update of
    `instance` (django-auditlog 3.4: the same fields, from the manager's own helpers)."""
    manager = LogEntry.objects
    pk = manager._get_pk_value(instance)
    try:
        object_repr = smart_str(instance)
    except ObjectDoesNotExist:
        object_repr = DEFAULT_OBJECT_REPR
    fields: dict[str, Any] = {
        "action": LogEntry.Action.UPDATE,
        "changes": changes,
        "content_type": ContentType.objects.get_for_model(instance),
        "object_pk": pk,
        "object_repr": object_repr,
        "serialized_data": manager._get_serialized_data_or_none(instance),
        "cid": get_cid(),
    }
    if isinstance(pk, int):
        fields["object_id"] = pk
    additional_data = getattr(instance, "get_additional_data", None)
    if callable(additional_data):
        fields["additional_data"] = additional_data()
    return LogEntry(**fields)

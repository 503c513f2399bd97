"""Audit records are visible and filterable in the admin and nobody can change them."""

from __future__ import annotations

import pytest
from auditlog.models import LogEntry
from django.contrib import admin
from django.contrib.contenttypes.models import ContentType
from django.test import RequestFactory
from django.urls import reverse

from portal.audit.models import AccessRecord
from portal.clinical.models import Patient


@pytest.fixture
def access_record(user, patient):
    return AccessRecord.objects.create(
        user=user,
        username=user.username,
        client_address="10.0.0.1",
        action="view",
        content_type=ContentType.objects.get_for_model(patient),
        object_id=str(patient.pk),
        detail="study page",
    )


@pytest.mark.parametrize("model", [AccessRecord, LogEntry])
def test_nobody_may_add_change_or_delete_audit_records(
    model, staff_user, access_record
):
    """staff_user is a superuser: even they get no write permission."""
    model_admin = admin.site._registry[model]
    request = RequestFactory().get("/admin/")
    request.user = staff_user
    entry = model.objects.first()
    assert entry is not None
    assert not model_admin.has_add_permission(request)
    assert not model_admin.has_change_permission(request, entry)
    assert not model_admin.has_delete_permission(request, entry)
    assert not model_admin.has_delete_permission(request)
    assert model_admin.has_view_permission(request, entry)
    assert model_admin.get_actions(request) == {}


def test_a_superuser_cannot_delete_through_the_admin(client, staff_user, access_record):
    client.force_login(staff_user)
    url = reverse("admin:audit_accessrecord_delete", args=[access_record.pk])
    assert client.post(url, {"post": "yes"}).status_code == 403
    change = reverse("admin:audit_accessrecord_change", args=[access_record.pk])
    client.post(change, {"username": "someone-else"})
    access_record.refresh_from_db()
    assert access_record.username == "sonographer"


def test_the_access_log_is_filterable_in_the_admin(client, make_user, access_record):
    client.force_login(make_user("administrator", "auditor"))
    url = reverse("admin:audit_accessrecord_changelist")
    assert client.get(url, {"action__exact": "view"}).context["cl"].result_count == 1
    assert (
        client.get(url, {"action__exact": "download"}).context["cl"].result_count == 0
    )
    assert client.get(url, {"q": "sonographer"}).context["cl"].result_count == 1


def test_the_change_log_is_visible_to_administrators(client, make_user):
    Patient.objects.create(identifier="X-1", name="Logged")
    client.force_login(make_user("administrator", "auditor"))
    response = client.get(reverse("admin:auditlog_logentry_changelist"))
    assert response.status_code == 200
    assert response.context["cl"].result_count >= 1

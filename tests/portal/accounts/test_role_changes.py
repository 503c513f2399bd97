"""Issue 18, finding 1: no silent privilege change.

Role and permission changes are audit entries shown in the audit trail (the admin's
log entries, which administrators read); an administrator cannot make itself or anyone
a superuser, grant single permissions, join a role of its own choosing or take over a
superuser's account; superusers come from an audited management command.
"""

from __future__ import annotations

from typing import Any

import pytest
from auditlog.models import LogEntry
from django.contrib.auth.models import Group, Permission
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from portal.accounts.directory import mirror_roles
from portal.accounts.roles import ADMINISTRATOR, RADIOLOGIST, STAFF

pytestmark = pytest.mark.django_db


def _user_form(user: Any, **changes: Any) -> dict[str, Any]:
    """The admin change form of `user` as the page would post it, with `changes`."""
    data = {
        "username": user.username,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "email": user.email,
        "is_active": "on" if user.is_active else "",
        "is_staff": "on" if user.is_staff else "",
        "is_superuser": "on" if user.is_superuser else "",
        "groups": [str(pk) for pk in user.groups.values_list("pk", flat=True)],
        "user_permissions": [],
        "last_login_0": "",
        "last_login_1": "",
        "date_joined_0": user.date_joined.strftime("%Y-%m-%d"),
        "date_joined_1": user.date_joined.strftime("%H:%M:%S"),
    }
    data.update(changes)
    return {key: value for key, value in data.items() if value != ""}


def _entries(user: Any) -> Any:
    return LogEntry.objects.get_for_object(user).order_by("timestamp", "pk")


def test_an_administrator_cannot_make_itself_superuser_or_radiologist(
    client, make_user
):
    admin_user = make_user(ADMINISTRATOR, "it-admin")
    radiologists = Group.objects.get(name=RADIOLOGIST)
    sign = Permission.objects.get(codename="sign_review")
    client.force_login(admin_user)

    response = client.post(
        reverse("admin:auth_user_change", args=[admin_user.pk]),
        _user_form(
            admin_user,
            is_superuser="on",
            groups=[str(g.pk) for g in admin_user.groups.all()]
            + [str(radiologists.pk)],
            user_permissions=[str(sign.pk)],
        ),
    )

    assert response.status_code in (200, 302)
    admin_user.refresh_from_db()
    assert not admin_user.is_superuser
    assert not admin_user.groups.filter(name=RADIOLOGIST).exists()
    assert not admin_user.user_permissions.exists()
    assert not admin_user.has_perm("review.sign_review")


def test_an_administrator_cannot_make_anyone_superuser_or_grant_single_permissions(
    client, make_user
):
    admin_user = make_user(ADMINISTRATOR, "it-admin")
    nurse = make_user(STAFF, "nurse")
    sign = Permission.objects.get(codename="sign_review")
    client.force_login(admin_user)

    client.post(
        reverse("admin:auth_user_change", args=[nurse.pk]),
        _user_form(nurse, is_superuser="on", user_permissions=[str(sign.pk)]),
    )

    nurse.refresh_from_db()
    assert not nurse.is_superuser
    assert not nurse.has_perm("review.sign_review")


def test_an_administrator_cannot_change_what_a_role_permits(client, make_user):
    admin_user = make_user(ADMINISTRATOR, "it-admin")
    group = Group.objects.get(name=ADMINISTRATOR)
    sign = Permission.objects.get(codename="sign_review")
    client.force_login(admin_user)

    client.post(
        reverse("admin:auth_group_change", args=[group.pk]),
        {
            "name": group.name,
            "permissions": [
                str(pk) for pk in group.permissions.values_list("pk", flat=True)
            ]
            + [str(sign.pk)],
        },
    )

    assert not group.permissions.filter(pk=sign.pk).exists()
    admin_user = type(admin_user).objects.get(pk=admin_user.pk)
    assert not admin_user.has_perm("review.sign_review")


def test_an_administrator_cannot_change_a_superusers_account(
    client, make_user, django_user_model
):
    admin_user = make_user(ADMINISTRATOR, "it-admin")
    root = django_user_model.objects.create_superuser("root", "", "a-root-passphrase-1")
    client.force_login(admin_user)

    password_page = reverse("admin:auth_user_password_change", args=[root.pk])
    response = client.post(
        password_page,
        {
            "password1": "taken-over-passphrase-9",
            "password2": "taken-over-passphrase-9",
        },
    )

    assert response.status_code == 403
    root.refresh_from_db()
    assert root.check_password("a-root-passphrase-1")


def test_a_role_given_in_the_admin_is_an_audit_entry_administrators_can_read(
    client, make_user
):
    admin_user = make_user(ADMINISTRATOR, "it-admin")
    nurse = make_user(STAFF, "nurse")
    radiologists = Group.objects.get(name=RADIOLOGIST)
    client.force_login(admin_user)

    response = client.post(
        reverse("admin:auth_user_change", args=[nurse.pk]),
        _user_form(
            nurse,
            groups=[str(g.pk) for g in nurse.groups.all()] + [str(radiologists.pk)],
        ),
        REMOTE_ADDR="10.4.4.4",
    )

    assert response.status_code == 302, response.content[:2000]
    assert nurse.groups.filter(name=RADIOLOGIST).exists()
    (change,) = [
        e
        for e in _entries(nurse)
        if RADIOLOGIST in e.changes_dict.get("groups", {}).get("objects", [])
    ]
    assert change.actor == admin_user
    assert change.remote_addr == "10.4.4.4"
    assert change.changes_dict["groups"]["type"] == "m2m"
    assert change.changes_dict["groups"]["operation"] == "add"
    assert change.changes_dict["groups"]["objects"] == [RADIOLOGIST]
    # The audit trail in the admin, as the administrator reads it.
    trail = client.get(reverse("admin:auditlog_logentry_changelist"))
    assert trail.status_code == 200
    assert "nurse" in trail.text
    detail = client.get(reverse("admin:auditlog_logentry_change", args=[change.pk]))
    assert RADIOLOGIST in detail.text


def test_a_superuser_flag_set_in_the_admin_by_a_superuser_is_recorded(
    client, make_user, django_user_model
):
    root = django_user_model.objects.create_superuser("root", "", "a-root-passphrase-1")
    nurse = make_user(STAFF, "nurse")
    client.force_login(root)

    client.post(
        reverse("admin:auth_user_change", args=[nurse.pk]),
        _user_form(nurse, is_superuser="on", is_staff="on"),
    )

    nurse.refresh_from_db()
    assert nurse.is_superuser
    change = _entries(nurse).filter(action=LogEntry.Action.UPDATE).last()
    assert change.changes_dict["is_superuser"] == ["False", "True"]
    assert change.actor == root


def test_roles_mapped_from_the_directory_are_audit_entries(make_user):
    nurse = make_user(STAFF, "dir-user")

    mirror_roles(user=nurse, roles={RADIOLOGIST})

    changes = [entry.changes_dict.get("groups") for entry in _entries(nurse)]
    added = [c["objects"] for c in changes if c and c["operation"] == "add"]
    removed = [c["objects"] for c in changes if c and c["operation"] == "delete"]
    assert [RADIOLOGIST] in added
    assert any(STAFF in objects for objects in removed)


def test_superusers_come_from_an_audited_command(make_user):
    nurse = make_user(STAFF, "nurse")

    call_command("superuser", "grant", "nurse", reason="on-call DBA, ticket 4411")

    nurse.refresh_from_db()
    assert nurse.is_superuser and nurse.is_staff
    entry = _entries(nurse).filter(action=LogEntry.Action.UPDATE).last()
    assert entry.changes_dict["is_superuser"] == ["False", "True"]
    assert entry.additional_data["via"] == "manage.py superuser grant"
    assert entry.additional_data["reason"] == "on-call DBA, ticket 4411"
    assert entry.additional_data["os_user"]

    call_command("superuser", "revoke", "nurse", reason="done")
    nurse.refresh_from_db()
    assert not nurse.is_superuser
    with pytest.raises(CommandError, match="no user named 'ghost'"):
        call_command("superuser", "grant", "ghost", reason="x")


def test_createsuperuser_is_recorded(django_user_model):
    call_command(
        "createsuperuser",
        username="first-root",
        email="root@example.org",
        interactive=False,
        verbosity=0,
    )

    root = django_user_model.objects.get(username="first-root")
    (entry,) = _entries(root)
    assert entry.action == LogEntry.Action.CREATE
    assert entry.changes_dict["is_superuser"][1] == "True"

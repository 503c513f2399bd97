"""Users, roles and API tokens in the admin site, without a way to raise oneself.

Administrators manage accounts and roles ("users and roles", portal.accounts.roles), so
what they cannot do is what would let them past their own role:
- make anyone a superuser, or grant permissions one by one (a direct permission such as
  review.sign_review is a role in all but name): both read-only except for superusers;
  superusers are made with `manage.py createsuperuser`, which the audit trail records;
- change their own roles (an administrator who could join the radiologists could sign);
- change a superuser's account (its password would hand them the superuser);
- change what a role's group permits.
Every change that remains is kept by django-auditlog (portal/audit/registry.py: users
with their groups and permissions, groups with their permissions) and shown in the
audit trail.

API tokens are stored as digests only (django-rest-knox); the admin lists who holds
tokens until when and can revoke them, never shows or mints one.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group, User
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from knox.models import AuthToken

# Fields only a superuser changes.
SUPERUSER_ONLY_USER_FIELDS = ("is_superuser", "user_permissions")


def _above(request: HttpRequest, user: Any) -> bool:
    """A superuser's account, out of reach of anyone who is not one."""
    return user is not None and user.is_superuser and not request.user.is_superuser


class PortalUserAdmin(UserAdmin):
    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = list(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            fields += SUPERUSER_ONLY_USER_FIELDS
            if obj is not None and obj.pk == request.user.pk:
                fields += ["groups", "is_staff", "is_active"]
        return fields

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return not _above(request, obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return not _above(request, obj) and super().has_delete_permission(request, obj)

    def user_change_password(
        self, request: HttpRequest, id: str, form_url: str = ""
    ) -> Any:
        target = self.get_object(request, id)
        if target is not None and not self.has_change_permission(request, target):
            raise PermissionDenied
        return super().user_change_password(request, id, form_url)


class PortalGroupAdmin(GroupAdmin):
    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = list(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            fields.append("permissions")
        return fields


class ApiTokenAdmin(admin.ModelAdmin):
    """Who holds API tokens until when; revoking is deleting. Digest and key hidden."""

    list_display = ("user", "created", "expiry")
    list_filter = ("created", "expiry")
    search_fields = ("user__username",)
    fields = ("user", "created", "expiry")
    readonly_fields = fields
    list_select_related = ("user",)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


for model, model_admin in (
    (User, PortalUserAdmin),
    (Group, PortalGroupAdmin),
    (AuthToken, ApiTokenAdmin),
):
    if admin.site.is_registered(model):
        admin.site.unregister(model)
    admin.site.register(model, model_admin)

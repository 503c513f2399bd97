"""The portal's role permissions (portal.accounts.roles), checked per HTTP method."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request


def needs(**by_method: tuple[str, ...]) -> Mapping[str, tuple[str, ...]]:
    """`needs(GET=(...), POST=(...))`: the permissions a view requires per method."""
    return MappingProxyType(by_method)


class PortalPermissions(BasePermission):
    """Grants a method when the user holds every permission the view lists for it.

    Views declare `required_permissions = needs(GET=(...), POST=(...))`: the same
    Django permissions the portal's pages require, so a role reshaped in the admin
    changes the API and the pages alike. A method a view does not list is refused.
    """

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if not user or not user.is_authenticated:
            return False
        if not hasattr(view, request.method.lower()):
            return True  # the view answers 405 Method Not Allowed, saying what is
        method = "GET" if request.method in ("HEAD", "OPTIONS") else request.method
        needed = getattr(view, "required_permissions", {}).get(method)
        if needed is None:
            return False
        missing = [perm for perm in needed if not user.has_perm(perm)]
        if missing:
            self.message = (
                "Your account's role does not allow this (it lacks "
                f"{', '.join(missing)}); ask an administrator for the right role."
            )
            return False
        return True

"""Sign-in with the hospital directory (LDAP), and the roles it grants.

The directory decides who holds which role: on every directory sign-in the user's
portal roles are set to exactly those its groups map to (LDAP_GROUP_* in the settings),
so a move between directory groups takes effect at the next sign-in, and someone in no
mapped group signs in holding no role and sees nothing. Groups that are not roles are
left alone.

A local account (one with a usable password in the portal's database) is never signed
in through the directory: a directory entry that shares a local administrator's name
must not take that account over. Directory users get an unusable local password.

Lockout is not handled here. The lockout backend comes before this one in
AUTHENTICATION_BACKENDS and refuses a locked name or address before the directory is
asked; a password the directory refuses ends as an ordinary failed login
(user_login_failed), counted like any other. A directory that cannot be reached
(server down, timeout) is no wrong password: the request is marked, the lockout does not
count it and the login form and API say the directory is unavailable.
"""

from __future__ import annotations

import logging
from typing import Any

import ldap
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.dispatch import receiver
from django.http import HttpRequest
from django_auth_ldap.backend import LDAPBackend, ldap_error

from portal.accounts.directory_settings import roles_of
from portal.accounts.roles import ADMINISTRATOR, ROLES

logger = logging.getLogger(__name__)


# The directory could not be asked, as opposed to answering "no".
OUTAGES = (ldap.SERVER_DOWN, ldap.TIMEOUT, ldap.CONNECT_ERROR, ldap.UNAVAILABLE)


@receiver(ldap_error, dispatch_uid="portal.accounts.directory.outage")
def _note_outage(
    sender: Any,
    context: str,
    request: HttpRequest | None = None,
    exception: Exception | None = None,
    **kwargs: Any,
) -> None:
    # Any step of a sign-in (looking the user up, binding as them, reading groups).
    if isinstance(exception, OUTAGES):
        if request is not None:
            request.directory_unavailable = True  # type: ignore[attr-defined]
        logger.error("directory unavailable: %s", type(exception).__name__)


def _is_local_account(username: str) -> bool:
    User = get_user_model()
    user = User.objects.filter(**{f"{User.USERNAME_FIELD}__iexact": username}).first()
    return user is not None and user.has_usable_password()


@transaction.atomic
def mirror_roles(*, user: Any, roles: set[str]) -> None:
    """Give a directory user exactly `roles`; administrators also enter the admin site."""
    unknown = roles - set(ROLES)
    if unknown:
        raise ValueError(
            f"unknown roles {sorted(unknown)}; roles are {', '.join(ROLES)}"
        )
    role_groups = list(Group.objects.filter(name__in=ROLES))
    user.groups.remove(*[group for group in role_groups if group.name not in roles])
    user.groups.add(*[group for group in role_groups if group.name in roles])
    is_staff = ADMINISTRATOR in roles
    if user.is_staff != is_staff:
        user.is_staff = is_staff
        user.save(update_fields=["is_staff"])


class DirectoryBackend(LDAPBackend):
    """django-auth-ldap's backend, with the portal's roles and local accounts kept apart."""

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> Any:
        username = kwargs.get(get_user_model().USERNAME_FIELD, username)
        if not username or _is_local_account(username.strip()):
            return None
        user = super().authenticate(request, username=username, password=password)
        if user is None:
            return None
        roles = roles_of(user.ldap_user.group_dns, settings.LDAP_ROLE_GROUPS)
        mirror_roles(user=user, roles=roles)
        # The user id only: a sign-in name can be a person's name.
        logger.info(
            "directory sign-in: user %s holds %s",
            user.pk,
            ", ".join(sorted(roles)) or "no role",
        )
        return user

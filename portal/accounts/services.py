"""Account changes made outside the admin site, each one an audit entry."""

from __future__ import annotations

import getpass
import logging
from typing import Any

from auditlog.context import set_extra_data
from django.contrib.auth import get_user_model
from django.db import transaction

logger = logging.getLogger(__name__)


def _operating_system_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        return "unknown"


@transaction.atomic
def superuser_set(*, username: str, grant: bool, reason: str) -> Any:
    """Make `username` a superuser (grant) or not. The change is recorded by
    django-auditlog with how it was made, by which operating-system account and why.

    Raises ValueError (the message says what is wrong) for an unknown user or an empty
    reason.
    """
    if not reason.strip():
        raise ValueError("give a reason (--reason): it goes into the audit trail")
    User = get_user_model()
    user = User.objects.filter(**{User.USERNAME_FIELD: username}).first()
    if user is None:
        raise ValueError(f"no user named {username!r}")
    context = {
        "actor": None,
        "remote_addr": None,
        "additional_data": {
            "via": "manage.py superuser " + ("grant" if grant else "revoke"),
            "os_user": _operating_system_user(),
            "reason": reason.strip()[:500],
        },
    }
    with set_extra_data(context_data=context):
        user.is_superuser = grant
        # A superuser without is_staff cannot reach the admin site; revoking keeps it.
        user.is_staff = user.is_staff or grant
        user.save(update_fields=["is_superuser", "is_staff"])
    logger.info(
        "user %s %s superuser by %s",
        user.pk,
        "made" if grant else "no longer",
        context["additional_data"]["os_user"],
    )
    return user

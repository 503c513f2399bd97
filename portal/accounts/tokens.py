"""API tokens (django-rest-knox): issued, limited per user and revoked.

Only a digest of a token is stored, so no one can read a token back, superusers
included. A user's tokens are all revoked when the password changes or the account is
deactivated (the receiver below).
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models.signals import pre_save
from django.dispatch import receiver
from django.utils import timezone
from knox.models import AuthToken

logger = logging.getLogger(__name__)


@transaction.atomic
def token_issue(*, user: Any) -> tuple[AuthToken, str]:
    """A new token for `user`: (the stored row, the key to hand over once).

    Expired tokens are removed; beyond API_TOKENS_PER_USER live tokens the oldest go.
    """
    tokens = AuthToken.objects.filter(user=user)
    tokens.filter(expiry__lt=timezone.now()).delete()
    live = list(tokens.order_by("-created").values_list("digest", flat=True))
    surplus = live[settings.API_TOKENS_PER_USER - 1 :]
    if surplus:
        AuthToken.objects.filter(digest__in=surplus).delete()
    instance, key = AuthToken.objects.create(user=user)
    logger.info("api token issued to user %s", user.pk)
    return instance, key


def tokens_revoke(*, user: Any, reason: str = "revoked") -> int:
    deleted, _ = AuthToken.objects.filter(user=user).delete()
    if deleted:
        logger.info("%d api token(s) of user %s %s", deleted, user.pk, reason)
    return deleted


@receiver(pre_save, sender=get_user_model(), dispatch_uid="portal.accounts.tokens")
def _revoke_on_password_change_or_deactivation(
    sender: Any, instance: Any, update_fields: Any = None, **kwargs: Any
) -> None:
    if instance.pk is None or kwargs.get("raw"):
        return
    if update_fields is not None and not {"password", "is_active"} & set(update_fields):
        return
    before = (
        sender.objects.filter(pk=instance.pk).values("password", "is_active").first()
    )
    if before is None:
        return
    if before["password"] != instance.password:
        tokens_revoke(user=instance, reason="revoked: password changed")
    elif before["is_active"] and not instance.is_active:
        tokens_revoke(user=instance, reason="revoked: account deactivated")

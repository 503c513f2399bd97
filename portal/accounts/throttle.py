"""Login throttling and lockout, for every way in (login page, admin, API).

Failures are counted in Django's cache per user name and per client address over a
window of LOGIN_LOCKOUT_SECONDS. A user name with LOGIN_MAX_FAILURES failures is locked
for the rest of the window, whatever the password; an address with LOGIN_MAX_FAILURES_PER_IP
failures (password spraying across many names) is refused the same way. A successful
login clears the user name's count.

The authentication backend enforces the lock, so the admin and API logins are covered
too; the login form only turns it into a message. Set CACHE_URL to a shared Redis in
production so that every web process sees the same counts. If the cache is down, logins
are not throttled (logged as a warning) rather than refused for everyone.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from django.conf import settings
from django.contrib.auth import user_logged_in, user_login_failed
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.forms import AuthenticationForm
from django.core.cache import cache
from django.core.exceptions import PermissionDenied, ValidationError
from django.dispatch import receiver
from django.http import HttpRequest

logger = logging.getLogger(__name__)

PREFIX = "login-failures"


def _key(kind: str, value: str) -> str:
    # Hashed: user names never appear in cache keys (or in logs, through them).
    digest = hashlib.sha256(value.strip().lower().encode()).hexdigest()[:32]
    return f"{PREFIX}:{kind}:{digest}"


def client_address(request: HttpRequest | None) -> str:
    """The client's address; behind NUM_PROXIES proxies, as the nearest one saw it."""
    if request is None:
        return ""
    proxies = settings.NUM_PROXIES
    if proxies:
        forwarded = [
            part.strip()
            for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")
            if part.strip()
        ]
        if len(forwarded) >= proxies:
            return forwarded[-proxies]
    return str(request.META.get("REMOTE_ADDR", ""))


def _count(key: str) -> int:
    try:
        return int(cache.get(key, 0))
    except Exception:
        logger.warning("login throttle: cache unavailable", exc_info=True)
        return 0


def _bump(key: str) -> None:
    try:
        if not cache.add(key, 1, timeout=settings.LOGIN_LOCKOUT_SECONDS):
            cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=settings.LOGIN_LOCKOUT_SECONDS)
    except Exception:
        logger.warning("login throttle: cache unavailable", exc_info=True)


def lockout_reason(username: str, address: str) -> str | None:
    """Why this login must be refused right now, or None."""
    minutes = max(1, settings.LOGIN_LOCKOUT_SECONDS // 60)
    if username and _count(_key("user", username)) >= settings.LOGIN_MAX_FAILURES:
        return (
            "Too many failed sign-in attempts for this account. It is locked for "
            f"{minutes} minutes; ask an administrator if you need access sooner."
        )
    if address and _count(_key("ip", address)) >= settings.LOGIN_MAX_FAILURES_PER_IP:
        return (
            "Too many failed sign-in attempts from this network address. "
            f"Try again in {minutes} minutes."
        )
    return None


def unlock(username: str) -> None:
    try:
        cache.delete(_key("user", username))
    except Exception:
        logger.warning("login throttle: cache unavailable", exc_info=True)


class ThrottledModelBackend(ModelBackend):
    """ModelBackend that refuses any login while the name or address is locked out."""

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> Any:
        if username is None:
            username = kwargs.get(self._username_field(), "")
        if lockout_reason(username or "", client_address(request)):
            logger.warning("login refused: locked out (address %s)", _address(request))
            # Stops authenticate() from trying other backends; counts as a failure.
            raise PermissionDenied
        return super().authenticate(request, username, password, **kwargs)

    @staticmethod
    def _username_field() -> str:
        from django.contrib.auth import get_user_model

        return get_user_model().USERNAME_FIELD


def _address(request: HttpRequest | None) -> str:
    return client_address(request) or "unknown"


@receiver(user_login_failed, dispatch_uid="portal.accounts.throttle.failed")
def _record_failure(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None, **_: Any
) -> None:
    username = str(credentials.get("username", "") or "")
    if username:
        _bump(_key("user", username))
    address = client_address(request)
    if address:
        _bump(_key("ip", address))
    # No user name in the log: it may be a patient's or a mistyped password.
    logger.info("login failed from %s", _address(request))


@receiver(user_logged_in, dispatch_uid="portal.accounts.throttle.succeeded")
def _clear_on_success(
    sender: Any, request: HttpRequest | None, user: Any, **_: Any
) -> None:
    unlock(user.get_username())


class ThrottledAuthenticationForm(AuthenticationForm):
    """The login form, saying "locked" instead of "wrong password" when it is."""

    def clean(self) -> dict[str, Any]:
        username = self.cleaned_data.get("username") or ""
        reason = lockout_reason(username, client_address(self.request))
        if reason:
            # Counted, so that hammering a locked account keeps it locked.
            user_login_failed.send(
                sender=__name__,
                credentials={"username": username},
                request=self.request,
            )
            raise ValidationError(reason, code="locked")
        return super().clean()

"""Login lockout for every way in (login page, admin, API) and every authentication
backend, built on django-axes.

Axes' backend (first in AUTHENTICATION_BACKENDS) refuses a locked name or address before
any backend that checks passwords runs, and its receivers of Django's login signals count
failures whichever backend refused them: the model backend today, a directory (LDAP)
backend beside it tomorrow. This module gives axes the two rules axes has no setting
for: a user name locks, from the address its failures came from, after
LOGIN_MAX_FAILURES failures (a lock per (name, address) pair, so nobody can lock someone
else out by failing with their name), and a client address (password spraying across
many names) after LOGIN_MAX_FAILURES_PER_IP, each for LOGIN_LOCKOUT_SECONDS after its
last failure; and a successful login clears the pair's count only, so one good account
cannot wipe an address's record. The address comes from portal/clientaddress.py:
X-Forwarded-For counts only from TRUSTED_PROXIES.

A failure because the directory (LDAP) could not be reached is no wrong password: it
is not counted, and the login form says that the directory is unavailable.

Counts live in Django's cache under hashed keys (no user name in a key or a log line).
Set CACHE_URL to a shared Redis in production so that every web process sees the same
counts. If the cache is down, logins are not throttled (logged as a warning) rather
than refused for everyone.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from axes.handlers.cache import AxesCacheHandler
from axes.helpers import (
    get_cache,
    get_cache_timeout,
    get_client_ip_address,
    get_client_username,
    make_cache_key_list,
)
from axes.signals import user_locked_out
from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse

from portal.clientaddress import client_address

logger = logging.getLogger(__name__)


DIRECTORY_UNAVAILABLE = (
    "The hospital directory cannot be reached right now, so directory accounts cannot "
    "sign in. Try again in a few minutes; this attempt does not count as a failed "
    "sign-in."
)


def directory_unavailable(request: HttpRequest | None) -> bool:
    """Whether this request's sign-in failed because the directory was unreachable
    (set by portal/accounts/directory.py), not because of a wrong password."""
    return bool(getattr(request, "directory_unavailable", False))


def lockout_username(request: HttpRequest | None, credentials: dict | None) -> str:
    """The name failures are counted under: case and spaces folded, because a
    directory backend matches "Ann" and "ann " to the same account."""
    raw = (credentials or {}).get("username")
    if raw is None and request is not None:
        raw = request.POST.get("username")
    return str(raw or "").strip().lower()


def cool_off(request: HttpRequest | None = None) -> timedelta:
    # Read when called, so that a changed setting applies without a restart of axes.
    return timedelta(seconds=settings.LOGIN_LOCKOUT_SECONDS)


def keep_the_views_answer(
    request: HttpRequest,
    original_response: HttpResponse | None = None,
    credentials: dict | None = None,
) -> HttpResponse | None:
    """Axes' lockout response: none of its own. The login form says why in its own
    words (LockoutAuthenticationForm) and the API answers a locked account like a
    wrong password, so that it does not tell an attacker which names exist."""
    return original_response


def _counters(
    request: HttpRequest, credentials: dict | None
) -> list[tuple[str, int, str]]:
    """(cache key, limit, message) for the (name, address) pair and for the address.

    A name is locked only together with the address its failures came from: counted by
    name alone, anyone could lock anyone out by typing their name wrongly five times.
    """
    minutes = max(1, settings.LOGIN_LOCKOUT_SECONDS // 60)
    username = get_client_username(request, credentials) or ""
    address = get_client_ip_address(request) or ""
    counters = []
    if username:
        counters.append(
            (
                _pair_key(username, address),
                settings.LOGIN_MAX_FAILURES,
                (
                    "Too many failed sign-in attempts for this account from this "
                    f"network address. It is locked here for {minutes} minutes; ask an "
                    "administrator if you need access sooner."
                ),
            )
        )
    if address:
        counters.append(
            (
                make_cache_key_list([{"ip_address": address}])[0],
                settings.LOGIN_MAX_FAILURES_PER_IP,
                (
                    "Too many failed sign-in attempts from this network address. "
                    f"Try again in {minutes} minutes."
                ),
            )
        )
    return counters


def _pair_key(username: str, address: str) -> str:
    # The same key axes makes for the lockout parameter ["username", "ip_address"].
    return make_cache_key_list([{"username": username, "ip_address": address}])[0]


def _count(key: str) -> int:
    try:
        return int(get_cache().get(key, 0))
    except Exception:
        logger.warning("login lockout: cache unavailable", exc_info=True)
        return 0


def lockout_reason(request: HttpRequest, credentials: dict | None = None) -> str | None:
    """Why a login with these credentials from this request is refused now, or None."""
    for key, limit, message in _counters(request, credentials):
        if _count(key) >= limit:
            return message
    return None


class LockoutHandler(AxesCacheHandler):
    """Axes' cache handler with a limit of its own for the name and for the address."""

    def get_failures(
        self, request: HttpRequest, credentials: dict | None = None
    ) -> int:
        return max(
            (_count(key) for key, _, _ in _counters(request, credentials)),
            default=0,
        )

    def is_locked(self, request: HttpRequest, credentials: dict | None = None) -> bool:
        return lockout_reason(request, credentials) is not None

    def user_login_failed(
        self,
        sender: Any,
        credentials: dict,
        request: HttpRequest | None = None,
        **kwargs: Any,
    ) -> None:
        if request is None:
            return
        if directory_unavailable(request):
            logger.warning("login not checked: the directory is unavailable")
            return
        timeout = get_cache_timeout(request)
        for key, _, _ in _counters(request, credentials):
            try:
                if not self.cache.add(key, 1, timeout=timeout):
                    self.cache.incr(key)
                    self.cache.touch(key, timeout=timeout)
            except ValueError:  # expired between add and incr
                self.cache.set(key, 1, timeout=timeout)
            except Exception:
                logger.warning("login lockout: cache unavailable", exc_info=True)
        # No user name in the log: it may be a patient's or a mistyped password.
        logger.info("login failed from %s", client_address(request) or "unknown")
        if self.is_locked(request, credentials):
            request.axes_locked_out = True
            request.axes_credentials = credentials
            user_locked_out.send(
                "axes",
                request=request,
                username=get_client_username(request, credentials),
                ip_address=get_client_ip_address(request),
            )

    def user_logged_in(
        self, sender: Any, request: HttpRequest, user: Any, **kwargs: Any
    ) -> None:
        username = lockout_username(request, {"username": user.get_username()})
        address = get_client_ip_address(request) or ""
        try:
            self.cache.delete(_pair_key(username, address))
        except Exception:
            logger.warning("login lockout: cache unavailable", exc_info=True)

    def user_logged_out(
        self, sender: Any, request: HttpRequest, user: Any, **kwargs: Any
    ) -> None:
        return None


class LockoutAuthenticationForm(AuthenticationForm):
    """The login form, saying "locked" instead of "wrong password" when it is."""

    def clean(self) -> dict[str, Any]:
        try:
            return super().clean()
        except ValidationError:
            if directory_unavailable(self.request):
                raise ValidationError(
                    DIRECTORY_UNAVAILABLE, code="directory_unavailable"
                ) from None
            if self.request is not None:
                credentials = {"username": self.cleaned_data.get("username") or ""}
                reason = lockout_reason(self.request, credentials)
                if reason:
                    raise ValidationError(reason, code="locked") from None
            raise

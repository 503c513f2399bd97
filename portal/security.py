"""Security middleware: the response headers no library here sets, and an idle timeout
for sessions. Small on purpose; Django's SecurityMiddleware does the rest (HSTS,
nosniff, referrer policy, cross-origin opener policy, HTTPS redirect) and django-csp
the content security policy (CONTENT_SECURITY_POLICY in the settings).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

from django.conf import settings
from django.contrib.auth import logout
from django.http import HttpRequest, HttpResponse

logger = logging.getLogger(__name__)

Handler = Callable[[HttpRequest], HttpResponse]
LAST_ACTIVITY_KEY = "last_activity"


class SecurityHeadersMiddleware:
    """Adds the permissions and resource policies, which neither Django nor django-csp set.

    Pages carry patient data, so an authenticated response that says nothing about
    caching is marked `no-store` (no copy on shared machines or in proxies).
    """

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response
        self.headers = {
            "Permissions-Policy": settings.PERMISSIONS_POLICY,
            "Cross-Origin-Resource-Policy": "same-origin",
        }

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        for name, value in self.headers.items():
            if value and name not in response:
                response[name] = value
        user = getattr(request, "user", None)
        if (
            user is not None
            and user.is_authenticated
            and "Cache-Control" not in response
        ):
            response["Cache-Control"] = "private, no-store"
        return response


class SessionIdleTimeoutMiddleware:
    """Signs a user out after SESSION_IDLE_TIMEOUT seconds without a request of theirs.

    Requests a page makes on its own (the study page polling its status) do not count
    as activity, so an open tab does not keep a session alive forever. Sessions also
    end after SESSION_COOKIE_AGE whatever happens, and when the browser closes.
    """

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response
        self.passive = [re.compile(p) for p in settings.SESSION_IDLE_PASSIVE_PATHS]

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            now = time.time()
            last = request.session.get(LAST_ACTIVITY_KEY)
            if last is not None and now - float(last) > settings.SESSION_IDLE_TIMEOUT:
                logger.info("session of user %s ended after idle timeout", user.pk)
                logout(request)
            elif last is None or not any(p.search(request.path) for p in self.passive):
                # A session with no stamp yet (signed in, then only polls) starts its
                # clock here; a poll never moves a running clock.
                request.session[LAST_ACTIVITY_KEY] = now
        return self.get_response(request)


def stamp_activity_at_login(
    sender: object, request: HttpRequest, **kwargs: object
) -> None:
    """Signing in is activity: the idle clock starts then, whatever comes next."""
    if request is not None and hasattr(request, "session"):
        request.session[LAST_ACTIVITY_KEY] = time.time()

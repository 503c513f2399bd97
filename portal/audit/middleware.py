"""django-auditlog's middleware with the portal's client address.

Auditlog's own takes the first X-Forwarded-For entry, which any client writes; the
portal believes the header only from TRUSTED_PROXIES (portal/clientaddress.py).
"""

from __future__ import annotations

from auditlog.middleware import AuditlogMiddleware as _AuditlogMiddleware
from django.http import HttpRequest

from portal.clientaddress import client_address


class AuditlogMiddleware(_AuditlogMiddleware):
    @staticmethod
    def _get_remote_addr(request: HttpRequest) -> str | None:
        return client_address(request)

    @staticmethod
    def _get_remote_port(request: HttpRequest) -> int | None:
        return None  # X-Forwarded-Port is the client's word too

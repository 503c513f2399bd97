from __future__ import annotations

from typing import Any

import pytest
from django.core.cache import cache


@pytest.fixture(autouse=True)
def _fresh_throttles() -> None:
    """Throttle counts live in the cache; each test starts with none."""
    cache.clear()


@pytest.fixture
def api() -> Any:
    from rest_framework.test import APIClient

    return APIClient()


@pytest.fixture
def as_role(make_user: Any):
    """as_role("staff") -> an API client sending that role's token (None: no role)."""

    from rest_framework.test import APIClient

    from portal.accounts.tokens import token_issue

    def client_for(role: str | None, username: str | None = None) -> Any:
        user = make_user(role, username or f"api-{role or 'nobody'}")
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {token_issue(user=user)[1]}")
        client.user = user
        return client

    return client_for


@pytest.fixture
def staff_api(as_role: Any) -> Any:
    return as_role("staff")

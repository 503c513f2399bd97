from __future__ import annotations

from typing import Any

from django.http import HttpRequest


def navigation(request: HttpRequest) -> dict[str, Any]:
    """The worklist count shown in the navigation, for those who have a worklist."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    if not user.has_perm("review.view_worklist"):
        return {}
    from portal.review.selectors import worklist_count

    return {"worklist_count": lambda: worklist_count()}

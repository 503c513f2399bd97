from __future__ import annotations

from rest_framework.throttling import UserRateThrottle


class UploadRateThrottle(UserRateThrottle):
    """Uploads per user (API_THROTTLE_UPLOADS), besides the general per-user rate."""

    scope = "uploads"

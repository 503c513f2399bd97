"""The dicomnet app's answers to what the apps below it announce (connected in apps.py)."""

from __future__ import annotations

from typing import Any

from portal.dicomnet.services import queue_results_send


def send_signed_reading(
    sender: Any, *, analysis_id: int, review_id: int, **kwargs: Any
) -> None:
    """A reading was signed: it goes to the PACS as a new, verified SR once the
    signing commits (if a destination is set and sending after sign-off is on)."""
    queue_results_send(analysis_id=analysis_id, review_id=review_id)

"""The review app's answers to what the apps below it announce (connected in apps.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from portal.review.services import studies_review_refresh_locked


def refresh_worklist_columns(
    sender: Any, *, study_ids: Sequence[int], **kwargs: Any
) -> None:
    """Results were recorded: recount those studies' worklist columns, in the same
    transaction, so the worklist never shows a result without its count."""
    studies_review_refresh_locked(study_ids=study_ids)

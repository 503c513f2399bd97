"""What the review app announces to the apps above it (dicomnet sends signed readings)."""

from __future__ import annotations

from django.dispatch import Signal

# Sent inside the transaction that signs a reading, with the keyword arguments
# analysis_id and review_id. Receivers defer outside work with transaction.on_commit.
reading_signed = Signal()

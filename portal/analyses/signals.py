"""What the analyses app announces to the apps above it.

A lower layer never calls a higher one: the apps that care (review keeps the studies'
worklist columns) connect a receiver in their AppConfig.ready().
"""

from __future__ import annotations

from django.dispatch import Signal

# Sent inside the transaction that stored a batch's results, with the keyword arguments
# analysis_ids (the rows recorded) and study_ids (their studies, sorted, each once).
# A receiver that raises rolls the batch back.
results_recorded = Signal()

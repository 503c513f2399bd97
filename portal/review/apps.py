from __future__ import annotations

from django.apps import AppConfig


class ReviewConfig(AppConfig):
    name = "portal.review"
    label = "review"
    verbose_name = "Radiologist review"

    def ready(self) -> None:
        from portal.analyses.signals import results_recorded
        from portal.review.receivers import refresh_worklist_columns

        results_recorded.connect(
            refresh_worklist_columns, dispatch_uid="review.refresh_worklist_columns"
        )

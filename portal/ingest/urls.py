from __future__ import annotations

from django.urls import path

from portal.ingest import views

app_name = "ingest"

urlpatterns = [
    path("uploads/<int:pk>/", views.batch_detail, name="batch_detail"),
    # Ends in status.json: polling it does not keep an idle session alive.
    path(
        "uploads/<int:pk>/status.json",
        views.batch_progress_json,
        name="batch_progress",
    ),
]

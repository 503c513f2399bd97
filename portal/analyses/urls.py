from __future__ import annotations

from django.urls import path

from portal.analyses import views

app_name = "analyses"

urlpatterns = [
    path("analyses/<int:pk>/retry/", views.analysis_retry, name="retry"),
    path(
        "analyses/<int:pk>/artifacts/<str:kind>",
        views.analysis_artifact,
        name="artifact",
    ),
]

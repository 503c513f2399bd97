from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from portal import metrics, views

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="review:dashboard"), name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("metrics", metrics.metrics, name="metrics"),
    path("accounts/", include("portal.accounts.urls")),
    path("admin/", admin.site.urls),
    path("", include("portal.pages.urls")),
    path("", include("portal.analyses.urls")),
    path("", include("portal.ingest.urls")),
    path("", include("portal.dicomnet.urls")),
    path("api/v1/", include("portal.api.urls")),
    path("", include("portal.review.urls")),
]

# JSON for unknown /api/ URLs, the usual page elsewhere.
handler404 = "portal.api.docs.handler404"

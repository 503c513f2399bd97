from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from portal import views

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="clinical:patient_list"), name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("accounts/", include("portal.accounts.urls")),
    path("admin/", admin.site.urls),
    path("", include("portal.clinical.urls")),
    path("", include("portal.analyses.urls")),
]

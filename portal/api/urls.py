"""/api/v1/: every view authenticates itself (token or session) through DRF, so the
portal's LoginRequiredMiddleware, which would redirect a token client to the login
page, is told to let these through."""

from __future__ import annotations

from django.contrib.auth.decorators import login_not_required
from django.urls import path

from portal.api import docs, views

app_name = "api"


def _api(view: type) -> object:
    return login_not_required(view.as_view())


urlpatterns = [
    path("", _api(docs.ApiRootView), name="root"),
    path("auth/token/", _api(views.TokenView), name="token"),
    path("auth/token/revoke/", _api(views.TokenRevokeView), name="token-revoke"),
    path("patients/", _api(views.PatientListView), name="patient-list"),
    path("patients/<int:pk>/", _api(views.PatientDetailView), name="patient-detail"),
    path("studies/", _api(views.StudyListView), name="study-list"),
    path("studies/<int:pk>/", _api(views.StudyDetailView), name="study-detail"),
    path("studies/<int:pk>/scans/", _api(views.StudyScansView), name="study-scans"),
    path(
        "scans/<int:pk>/original/",
        _api(views.ScanOriginalView),
        name="scan-original",
    ),
    path("batches/<int:pk>/", _api(views.BatchDetailView), name="batch-detail"),
    path("analyses/<int:pk>/", _api(views.AnalysisDetailView), name="analysis-detail"),
    path(
        "analyses/<int:pk>/retry/",
        _api(views.AnalysisRetryView),
        name="analysis-retry",
    ),
    path(
        "analyses/<int:pk>/artifacts/<str:kind>/",
        _api(views.AnalysisArtifactView),
        name="analysis-artifact",
    ),
    path("schema/", _api(docs.SchemaView), name="schema"),
    path("docs/", _api(docs.SwaggerView), name="docs"),
]

"""/api/v1/: every view authenticates itself (token or session) through DRF, so the
portal's LoginRequiredMiddleware, which would redirect a token client to the login
page, is told to let these through."""

from __future__ import annotations

from django.contrib.auth.decorators import login_not_required
from django.urls import path

from portal.api import docs
from portal.api.views import (
    analyses,
    auth,
    batches,
    calibrations,
    patients,
    scans,
    studies,
)

app_name = "api"


def _api(view: type) -> object:
    return login_not_required(view.as_view())


urlpatterns = [
    path("", _api(docs.ApiRootView), name="root"),
    path("auth/token/", _api(auth.TokenView), name="token"),
    path("auth/token/revoke/", _api(auth.TokenRevokeView), name="token-revoke"),
    path("patients/", _api(patients.PatientListView), name="patient-list"),
    path("patients/<int:pk>/", _api(patients.PatientDetailView), name="patient-detail"),
    path("studies/", _api(studies.StudyListView), name="study-list"),
    path("studies/<int:pk>/", _api(studies.StudyDetailView), name="study-detail"),
    path("studies/<int:pk>/scans/", _api(studies.StudyScansView), name="study-scans"),
    path(
        "scans/<int:pk>/original/",
        _api(scans.ScanOriginalView),
        name="scan-original",
    ),
    path(
        "scans/<int:pk>/signed-outline/",
        _api(scans.ScanSignedOutlineView),
        name="scan-signed-outline",
    ),
    path("batches/<int:pk>/", _api(batches.BatchDetailView), name="batch-detail"),
    path(
        "analyses/<int:pk>/", _api(analyses.AnalysisDetailView), name="analysis-detail"
    ),
    path(
        "analyses/<int:pk>/retry/",
        _api(analyses.AnalysisRetryView),
        name="analysis-retry",
    ),
    path(
        "analyses/<int:pk>/artifacts/<str:kind>/",
        _api(analyses.AnalysisArtifactView),
        name="analysis-artifact",
    ),
    path(
        "analyses/<int:pk>/dicom/<str:kind>/",
        _api(analyses.AnalysisDicomView),
        name="analysis-dicom",
    ),
    path(
        "calibrations/",
        _api(calibrations.CalibrationListView),
        name="calibration-list",
    ),
    path(
        "calibrations/active/",
        _api(calibrations.CalibrationActiveView),
        name="calibration-active",
    ),
    path(
        "calibrations/<int:pk>/",
        _api(calibrations.CalibrationDetailView),
        name="calibration-detail",
    ),
    path("schema/", _api(docs.SchemaView), name="schema"),
    path("docs/", _api(docs.SwaggerView), name="docs"),
]

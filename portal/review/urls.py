from __future__ import annotations

from django.urls import path

from portal.review import registry_views, views

app_name = "review"

urlpatterns = [
    path("dashboard/", views.dashboard, name="dashboard"),
    path("worklist/", views.worklist, name="worklist"),
    path("agreement/", views.agreement, name="agreement"),
    path("calibration/", views.calibration, name="calibration"),
    path(
        "calibration/<int:pk>/activate/",
        views.calibration_activate,
        name="calibration_activate",
    ),
    path(
        "calibration/fits/<int:pk>/",
        views.calibration_fit_status,
        name="calibration_fit_status",
    ),
    path(
        "calibration/fits/<int:pk>/retry/",
        views.calibration_fit_retry,
        name="calibration_fit_retry",
    ),
    path(
        "calibration/rollback/", views.calibration_rollback, name="calibration_rollback"
    ),
    path("models/", registry_views.models_page, name="models"),
    path("models/upload/", registry_views.model_upload, name="model_upload"),
    path(
        "models/<int:pk>/promote/",
        registry_views.model_promote,
        name="model_promote",
    ),
    path(
        "models/requests/<int:pk>/confirm/",
        registry_views.model_promotion_confirm,
        name="model_promotion_confirm",
    ),
    path(
        "models/requests/<int:pk>/withdraw/",
        registry_views.model_promotion_withdraw,
        name="model_promotion_withdraw",
    ),
    path("models/rollback/", registry_views.model_rollback, name="model_rollback"),
    path("models/shadow/", registry_views.model_shadow, name="model_shadow"),
    path(
        "studies/<int:pk>/pathology/",
        views.study_pathology,
        name="study_pathology",
    ),
    path(
        "lesions/<int:pk>/pathology/",
        views.lesion_pathology,
        name="lesion_pathology",
    ),
    path("scans/<int:pk>/review/", views.scan_review, name="scan_review"),
    path("scans/<int:pk>/lesion/", views.scan_lesion, name="scan_lesion"),
    path("scans/<int:pk>/display.png", views.scan_display, name="scan_display"),
    path(
        "analyses/<int:pk>/outline.png",
        views.analysis_outline,
        name="analysis_outline",
    ),
    path("reviews/<int:pk>/outline.png", views.review_outline, name="review_outline"),
    path(
        "reviews/<int:pk>/outline-layer.png",
        views.review_outline_layer,
        name="review_outline_layer",
    ),
    path("studies/<int:pk>/report.pdf", views.study_report, name="study_report"),
]

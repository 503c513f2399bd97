from __future__ import annotations

from django.urls import path

from portal.dicomnet import views

app_name = "dicomnet"

urlpatterns = [
    path(
        "analyses/<int:pk>/dicom/<str:kind>",
        views.analysis_dicom,
        name="analysis_dicom",
    ),
]

from __future__ import annotations

from django.urls import path

from portal.pages import views

# The namespace these pages had when they lived in portal.clinical: links and
# reverse() calls everywhere name them clinical:study_detail and so on.
app_name = "clinical"

urlpatterns = [
    path("patients/", views.patient_list, name="patient_list"),
    path("patients/<int:pk>/", views.patient_detail, name="patient_detail"),
    path("studies/<int:pk>/", views.study_detail, name="study_detail"),
    path("studies/<int:pk>/upload/", views.study_upload, name="study_upload"),
    path("studies/<int:pk>/status.json", views.study_status, name="study_status"),
    path("scans/<int:pk>/original", views.scan_original, name="scan_original"),
]

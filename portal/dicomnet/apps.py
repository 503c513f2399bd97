from __future__ import annotations

from django.apps import AppConfig


class DicomNetConfig(AppConfig):
    name = "portal.dicomnet"
    label = "dicomnet"
    verbose_name = "DICOM networking"

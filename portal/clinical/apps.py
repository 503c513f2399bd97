from __future__ import annotations

from django.apps import AppConfig


class ClinicalConfig(AppConfig):
    name = "portal.clinical"
    label = "clinical"

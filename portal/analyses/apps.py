from __future__ import annotations

from django.apps import AppConfig


class AnalysesConfig(AppConfig):
    name = "portal.analyses"
    label = "analyses"

from __future__ import annotations

from django.apps import AppConfig


class PagesConfig(AppConfig):
    """The top layer's pages: views that compose several apps (the study page, its
    upload and progress). They import the apps below them; nothing imports them."""

    name = "portal.pages"
    label = "pages"
    verbose_name = "Pages"

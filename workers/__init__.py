"""Celery workers: `celery -A workers worker -Q inference,celery ...`."""

from __future__ import annotations

from workers.celery_app import app

__all__ = ["app"]

"""Celery workers: `celery -A workers worker` (README, Production)."""

from __future__ import annotations

from workers.celery_app import app

__all__ = ["app"]

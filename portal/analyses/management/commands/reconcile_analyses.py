"""`manage.py reconcile_analyses [--dry-run]`: one sweep of the reconciler, now."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from portal.analyses.reconciler import reconcile


class Command(BaseCommand):
    help = (
        "Requeue analyses whose worker was lost, resend queued ones whose broker "
        "message was lost, fail those out of attempts (what every worker runs every "
        "RECONCILE_INTERVAL seconds)."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="report what would change; write nothing and send nothing",
        )

    def handle(self, *args: Any, dry_run: bool = False, **options: Any) -> None:
        result = reconcile(dry_run=dry_run)
        verb = "would be" if dry_run else "were"
        self.stdout.write(
            f"running with no heartbeat for {settings.ANALYSIS_STALE_RUNNING_SECONDS} s "
            f"(worker lost): {len(result.requeued)} {verb} requeued {result.requeued}"
        )
        self.stdout.write(
            f"queued for over {settings.ANALYSIS_STALE_QUEUED_SECONDS} s with no "
            f"message in the broker: {len(result.resent)} {verb} resent {result.resent}"
        )
        self.stdout.write(
            f"out of attempts ({settings.ANALYSIS_MAX_ATTEMPTS}): "
            f"{len(result.failed)} {verb} failed {result.failed}"
        )
        if result.waiting:
            self.stdout.write(
                f"queued for long but with a message waiting (left alone): "
                f"{len(result.waiting)}"
            )
        if result.broker_error:
            self.stderr.write(f"broker: {result.broker_error}")

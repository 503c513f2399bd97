"""``python manage.py export_training_set --out DIR [--since DATE] [--scanner NAME ...]``."""

from __future__ import annotations

import datetime
import getpass
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from portal.review.training_export import ExportError, export_training_set


def _date(value: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"--since {value!r} is not a date (YYYY-MM-DD)") from None


class Command(BaseCommand):
    help = (
        "Write the scans with a current signed review as a de-identified training "
        "source (images/, masks/, MANIFEST.csv, README.md) for python -m ml finetune."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--out", type=Path, required=True, help="a new folder")
        parser.add_argument(
            "--since", help="only reviews signed on or after this date (YYYY-MM-DD)"
        )
        parser.add_argument(
            "--scanner",
            action="append",
            default=[],
            help="only scans whose manufacturer/model contains this (repeatable)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        since = _date(options["since"]) if options["since"] else None
        try:
            summary = export_training_set(
                out=options["out"],
                since=since,
                scanners=tuple(options["scanner"]),
                username=f"(export by {getpass.getuser()})",
            )
        except ExportError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"exported {summary.rows} scans of {summary.patients} patients to "
            f"{summary.out} (classes {dict(summary.classes)}, segmentation "
            f"{dict(summary.segmentation)}, label origin "
            f"{dict(summary.label_origins)}; {summary.skipped_scanner} left out by "
            "--scanner)"
        )

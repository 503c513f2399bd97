"""`manage.py install_model DIR`: copy a fine-tuned model folder (python -m ml finetune's
output, with compare_report.json from python -m ml compare) into ML_MODELS_DIR and record
it in the registry. It is installed, not active: an administrator promotes it on the
model registry page (/models/)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from portal.registry.services import model_version_install


class Command(BaseCommand):
    help = "Install a fine-tuned model version (not active until promoted)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("directory", type=Path)
        parser.add_argument(
            "--user", help="username recorded as the installer (default: none)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        user = None
        if options["user"]:
            user = get_user_model().objects.filter(username=options["user"]).first()
            if user is None:
                raise CommandError(f"no user {options['user']!r}")
        try:
            record = model_version_install(
                source=options["directory"], installed_by=user
            )
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        verdicts = "no comparison report"
        if record.comparison:
            counts: dict[str, int] = {}
            for result in record.comparison.get("sets", {}).values():
                for measure in result.get("measures", {}).values():
                    verdict = measure.get("verdict", "n/a")
                    counts[verdict] = counts.get(verdict, 0) + 1
            verdicts = ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
        self.stdout.write(
            f"installed {record.version} (comparison: {verdicts}); promote it on "
            "/models/"
        )

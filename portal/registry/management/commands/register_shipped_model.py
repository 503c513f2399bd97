"""`manage.py register_shipped_model`: record the shipped model (ML_WEIGHTS_DIR) in the
registry, run after `migrate` at every deploy (docker compose's migrate service, `make
migrate`). The model registry page only reads; without this step the shipped model is
shown unrecorded until the first promotion records it."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from portal.registry.services import model_version_register_shipped


class Command(BaseCommand):
    help = "Record the shipped model version in the registry (idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        record = model_version_register_shipped()
        if record is None:
            # Not an error: a deployment may start before its weights are in place.
            self.stderr.write(
                "no shipped model recorded: ML_WEIGHTS_DIR has no readable model.json"
            )
            return
        self.stdout.write(f"shipped model {record.version} is recorded")

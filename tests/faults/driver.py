"""The portal side of a fault test, run in the stack's own environment (a subprocess):

    driver.py migrate
    driver.py create N [SIZE]     uploads N distinct scans through the portal's services
    driver.py status              every analysis as JSON
    driver.py reconcile           one reconciler sweep
    driver.py health              what /healthz answers

Prints one JSON value on its last line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import django

django.setup()

import numpy as np
from django.core.management import call_command


def create(count: int, size: int) -> list[int]:
    from django.contrib.auth import get_user_model

    from bench.load import blob_png
    from portal.analyses.modelinfo import current_model_version
    from portal.analyses.services import scan_submit
    from portal.clinical.models import Patient
    from portal.clinical.services import patient_create, study_create
    from portal.clinical.uploads import validate_content

    user, _ = get_user_model().objects.get_or_create(username="fault-driver")
    number = Patient.objects.count() + 1
    patient = patient_create(identifier=f"FAULT-{number}", name="Fault Test")
    study = study_create(patient=patient, created_by=user)
    version = current_model_version()
    ids = []
    for index in range(count):
        upload = validate_content(
            filename=f"scan-{index}.png",
            content=blob_png(np.random.default_rng(number * 10_000 + index), size),
        )
        scan = scan_submit(
            study=study, upload=upload, uploaded_by=user, model_version=version
        )
        ids.append(scan.analyses.get().pk)
    return ids


def status() -> list[dict]:
    from portal.analyses.models import Analysis

    return [
        {
            "id": a.pk,
            "status": a.status,
            "attempts": a.attempts,
            "error": a.error,
            "worker": a.worker,
            "label": a.label,
            "artifacts": sorted(a.artifact_names().values()),
        }
        for a in Analysis.objects.order_by("pk")
    ]


def health() -> dict:
    from django.test import Client

    response = Client(SERVER_NAME="127.0.0.1").get("/healthz")
    return {"status_code": response.status_code, **response.json()}


def main(argv: list[str]) -> object:
    command = argv[0]
    if command == "migrate":
        call_command("migrate", verbosity=0, interactive=False)
        return {"migrated": True}
    if command == "create":
        return create(int(argv[1]), int(argv[2]) if len(argv) > 2 else 256)
    if command == "status":
        return status()
    if command == "reconcile":
        from portal.analyses.reconciler import reconcile

        return reconcile().counts()
    if command == "health":
        return health()
    raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))

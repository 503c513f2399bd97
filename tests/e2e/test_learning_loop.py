"""The whole site loop on fixture scans with a tiny model, one test: readers sign
corrected outlines and labels, the portal exports them, ml fine-tunes one epoch on the
export and compares the candidate with its base on the export's held-back patients; the
candidate is installed and promoted (by the rule: a second administrator confirms when
its comparison says "worse"), and a real Celery worker on real Redis, never restarted,
analyses the next upload with it, runs the base in shadow beside it, and after the
rollback analyses the next upload with the base again."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse

from bench.launch import database_url, start_worker, stop_worker, tail
from tests.conftest import SCANS_DIR
from tests.e2e.conftest import PIXEL_LIMIT
from tests.ml import conftest as ml_fixtures
from tests.portal.review.conftest import analysed_scan

# The real sources' fixture (skips without the shared data), shared by name.
all_sources = ml_fixtures.all_sources
# Transactions commit: the worker process reads what the test writes.
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SIZE = 64
TIMEOUT_S = float(os.environ.get("E2E_TIMEOUT", "420"))


def _upload(client: Client, study: Any, path: Path) -> Any:
    """Upload one scan through the study page, as a member of staff does."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    from portal.analyses.models import Analysis

    response = client.post(
        reverse("clinical:study_upload", args=[study.pk]),
        {"files": [SimpleUploadedFile(path.name, path.read_bytes())]},
    )
    assert response.status_code in (200, 302), response.content[:500]
    return Analysis.objects.get(scan__study=study, scan__original_filename=path.name)


def _finished(analysis: Any, process: Any, log_path: Path) -> Any:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        analysis.refresh_from_db()
        if analysis.is_finished:
            assert analysis.status == "succeeded", f"{analysis.error}\n{tail(log_path)}"
            return analysis
        assert process.poll() is None, f"worker died:\n{tail(log_path)}"
        assert time.monotonic() < deadline, f"still {analysis.status}\n{tail(log_path)}"
        time.sleep(0.5)


def _shadow_of(analysis: Any, process: Any, log_path: Path) -> Any:
    from portal.analyses.models import ShadowResult

    deadline = time.monotonic() + 60
    while not (found := ShadowResult.objects.filter(analysis=analysis).first()):
        assert process.poll() is None, f"worker died:\n{tail(log_path)}"
        assert time.monotonic() < deadline, f"no shadow result\n{tail(log_path)}"
        time.sleep(0.5)
    return found


def test_sign_export_finetune_compare_promote_serve_and_roll_back(
    media_root, settings, tmp_path, make_user, user, study, all_sources, e2e_broker
):
    from ml import weights_io
    from ml.config import CLASSES, MODEL_NAME
    from ml.model import build_busnet
    from ml.training.compare import RULE, compare
    from ml.training.finetune import (
        SITE_SPLIT_FILE,
        FinetuneConfig,
        finetune,
        source_sha256,
    )
    from portal.clinical.services import patient_create, study_create
    from portal.review.services import review_save
    from portal.review.training_export import export_training_set

    settings.TRAINING_EXPORT_KEY = "loop-test-site-key-0123456789"
    reader = make_user("radiologist", "dr-loop")
    labels = ["normal", "benign", "malignant"] * 3
    for n, label in enumerate(labels):
        patient = patient_create(identifier=f"LOOP-{n}", name=f"Loop Patient {n}")
        study = study_create(patient=patient, created_by=user)
        scan = analysed_scan(study, user, filename=f"loop-{n}.png")
        edit = np.zeros((48, 64), bool)
        edit[5 + n : 25 + n, 10:40] = True
        outline: dict[str, Any] = (
            {"outline_state": "no_lesion"}
            if label == "normal"
            else {"outline_state": "corrected", "outline_mask": edit}
        )
        review_save(
            analysis=scan.analyses.get(),
            author=reader,
            # A correction must differ from the model's label (malignant here).
            agrees_with_model=label == "malignant",
            label=label,
            birads="3",
            sign=True,
            **outline,
        )
    export = tmp_path / "site-export"
    summary = export_training_set(out=export)
    assert summary.rows == 9 and summary.patients == 9

    base = tmp_path / "base"
    weights_io.save(
        build_busnet(SIZE),
        base,
        weights_io.ModelMeta(
            name=MODEL_NAME,
            version="",
            image_size=SIZE,
            classes=list(CLASSES),
            training={"sources": list(all_sources)},
        ),
    )
    candidate = tmp_path / "candidate"
    tuned = finetune(
        FinetuneConfig(
            base=base,
            site_sources=(export,),
            out_dir=candidate,
            epochs=1,
            epoch_images=16,
            original_limit=2,
            augment=False,
            cache_dir=None,
        )
    )
    meta = weights_io.read_meta(candidate)
    (site,) = meta.training["site_sources"]
    assert site["source_sha256"] == source_sha256(export)
    assert site["images"] == 9 and site["without_outline"] == 0
    assert (
        meta.training["finetuned_from"]["version"] == weights_io.read_meta(base).version
    )
    assert tuned["version"] == meta.version

    report = compare(base, candidate, [export], original_limit=2, rounds=20)
    (split,) = json.loads((candidate / SITE_SPLIT_FILE).read_text()).values()
    site_set = report["sets"][f"site:site-{export.name}"]
    assert site_set["n"] == len(split["test"]) > 0
    assert set(site_set["measures"]) == set(RULE)
    assert Path(candidate / "compare_report.md").is_file()

    # --- install, then promote by the rule written before the run ---------------------
    from django.core.management import call_command

    from portal.registry.models import ModelActivation, ModelVersion
    from portal.registry.selectors import model_version_active, model_version_shadow
    from portal.registry.services import (
        PromotionNeedsConfirmation,
        model_promote,
        model_promotion_confirm,
        model_promotion_request,
        model_rollback,
        model_shadow_set,
        promotion_concerns,
    )

    base_version = weights_io.read_meta(base).version
    settings.ML_WEIGHTS_DIR = base  # the shipped model of this site
    settings.ML_MODELS_DIR = tmp_path / "models"
    settings.UPLOAD_MAX_PIXELS = PIXEL_LIMIT
    first, second = (make_user("administrator", f"admin-{n}") for n in (1, 2))
    call_command("install_model", str(candidate), "--user", first.username)
    record = ModelVersion.objects.get(version=meta.version)
    assert record.comparison["baseline"] == base_version
    assert record.lineage["site_sources"][0]["source_sha256"] == source_sha256(export)
    worse = [
        f"worse on {label}: {name}"
        for label, result in report["sets"].items()
        for name, measure in result["measures"].items()
        if measure["verdict"] == "worse"
    ]
    assert sorted(promotion_concerns(record, active=base_version)) == sorted(worse)

    log_path = tmp_path / "worker.log"
    process = start_worker(
        database=database_url(connection.settings_dict),
        broker=e2e_broker,
        media_root=media_root,
        log_path=log_path,
        extra_env={
            "UPLOAD_MAX_PIXELS": str(PIXEL_LIMIT),
            "ML_MODELS_DIR": str(settings.ML_MODELS_DIR),
        },
        name="learning-loop",
        queues=[settings.CELERY_INFERENCE_QUEUE, settings.CELERY_SHADOW_QUEUE],
    )
    try:
        uploader = Client()
        uploader.force_login(user)
        scans = sorted(SCANS_DIR.glob("*/*.png"))
        before = _finished(_upload(uploader, study, scans[0]), process, log_path)
        assert before.model_version == base_version

        if worse:
            with pytest.raises(PromotionNeedsConfirmation):
                model_promote(model_version=record, user=first, reason="site tuned")
            asked = model_promotion_request(
                model_version=record, user=first, reason="site tuned"
            )
            model_promotion_confirm(request=asked, user=second)
        else:
            model_promote(model_version=record, user=first, reason="site tuned")
        assert model_version_active() == meta.version
        model_shadow_set(
            model_version=ModelVersion.objects.get(version=base_version),
            user=first,
            reason="watch the old one beside it",
        )

        # The same worker process, never restarted, serves the promoted version.
        promoted = _finished(_upload(uploader, study, scans[1]), process, log_path)
        assert promoted.model_version == meta.version
        assert promoted.label in CLASSES and promoted.logits is not None
        shadow = _shadow_of(promoted, process, log_path)
        assert shadow.model_version == base_version and not shadow.error
        assert shadow.label in CLASSES and shadow.mask_dice is not None
        before.refresh_from_db()
        assert before.model_version == base_version  # kept the version that made it

        model_rollback(user=second, reason="back to the shipped model")
        assert model_version_active() == base_version
        assert model_version_shadow() is None  # the shadow became the active one
        rolled_back = _finished(_upload(uploader, study, scans[2]), process, log_path)
        assert rolled_back.model_version == base_version
        assert not rolled_back.shadow_results.exists()
        assert process.poll() is None
    finally:
        stop_worker(process)
        # Closes the worker's database connections before the test database is flushed.
        connection.close()
    assert [a.action for a in ModelActivation.objects.filter(role="active")] == [
        "rollback",
        "promote",
    ]

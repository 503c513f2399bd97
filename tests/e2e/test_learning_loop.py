"""The site loop on fixture scans with a tiny model: readers sign corrected outlines and
labels, the portal exports them, ml fine-tunes one epoch on the export and compares the
candidate with its base on the export's held-back patients. (Promotion and rollback in
the portal are not built yet: issue 17 item 5.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.ml import conftest as ml_fixtures
from tests.portal.review.conftest import analysed_scan

# The real sources' fixture (skips without the shared data), shared by name.
all_sources = ml_fixtures.all_sources
pytestmark = [pytest.mark.slow, pytest.mark.django_db]

SIZE = 64


def test_signed_scans_export_finetune_and_compare(
    media_root, settings, tmp_path, make_user, user, all_sources
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

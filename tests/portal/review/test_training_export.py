"""export_training_set: the signed scans as a de-identified training source that ml's
one manifest reader reads, with the signed outline (or none) and the signed label."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from django.core.management import CommandError, call_command
from PIL import Image

from ml.training.sources import load_image, load_mask, read_manifest, register_source
from portal.audit.models import AccessRecord
from portal.clinical.services import patient_create, study_create
from portal.review.services import review_save
from portal.review.training_export import pseudonym
from tests.portal.review.conftest import analysed_scan

KEY = "site-secret-key-for-tests-0123456789"


@pytest.fixture
def site_key(settings):
    settings.TRAINING_EXPORT_KEY = KEY
    return KEY


def _sign(scan, reader, **values):
    fields = {"agrees_with_model": True, "label": "", "birads": "4A", "note": ""}
    fields.update(values)
    return review_save(analysis=scan.analyses.get(), author=reader, sign=True, **fields)


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "MANIFEST.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_the_export_is_a_source_ml_reads(
    media_root, site_key, tmp_path, radiologist, user
):
    patient = patient_create(identifier="MRN-778812", name="Jane Exportdoe")
    study = study_create(patient=patient, created_by=user, accession_number="ACC-99")
    corrected = analysed_scan(study, user, filename="jane-left.png")
    plain = analysed_scan(study, user, filename="jane-right.png")
    normal = analysed_scan(study, user, filename="jane-normal.png")
    unsigned = analysed_scan(study, user, filename="draft.png")
    edit = np.zeros((48, 64), bool)
    edit[5:25, 10:50] = True
    _sign(corrected, radiologist, outline_state="corrected", outline_mask=edit)
    _sign(plain, radiologist, agrees_with_model=False, label="benign")
    _sign(normal, radiologist, agrees_with_model=False, label="normal")
    review_save(
        analysis=unsigned.analyses.get(),
        author=radiologist,
        agrees_with_model=True,
        label="",
        birads="3",
    )
    out = tmp_path / "site"

    call_command("export_training_set", "--out", str(out))

    rows = {row["path"]: row for row in _rows(out)}
    assert len(rows) == 3  # the draft is not exported
    key = pseudonym(KEY, "patient", "MRN-778812")
    assert {row["patient"] for row in rows.values()} == {key}
    by_scan = {
        s.pk: f"images/{pseudonym(KEY, 'scan', str(s.uuid))}.png"
        for s in (corrected, plain, normal)
    }
    assert rows[by_scan[corrected.pk]]["segmentation"] == "reader"
    assert rows[by_scan[corrected.pk]]["class"] == "malignant"
    assert rows[by_scan[plain.pk]]["segmentation"] == "none"
    assert rows[by_scan[plain.pk]]["mask_path"] == ""
    assert rows[by_scan[plain.pk]]["class"] == "benign"
    assert rows[by_scan[normal.pk]]["segmentation"] == "no_lesion"
    assert {row["label_origin"] for row in rows.values()} == {"reader"}

    # Nothing that names the patient, the study or a date, in any file or file name.
    texts = [p.name for p in out.rglob("*")] + [
        (out / name).read_text() for name in ("MANIFEST.csv", "README.md")
    ]
    for secret in ("MRN-778812", "Exportdoe", "Jane", "ACC-99", "jane"):
        assert not any(secret in text for text in texts), secret
    assert not any(re.search(r"\d{4}-\d{2}-\d{2}|\d{2}:\d{2}", t) for t in texts)
    assert "scans: 3, patients: 1" in (out / "README.md").read_text()

    # ml's one reader: the corrected outline is the edit; a row without one trains
    # the classifier only.
    name = register_source(out)
    records = {r.path: r for r in read_manifest(name)}
    record = records[by_scan[corrected.pk]]
    image = load_image(out, record)
    assert image.shape == (48, 64, 3)
    assert np.array_equal(load_mask(out, record, (64, 48)), edit)
    unknown = records[by_scan[plain.pk]]
    assert not unknown.has_segmentation
    assert not load_mask(out, unknown, (64, 48)).any()
    assert records[by_scan[normal.pk]].has_segmentation
    # Each exported scan leaves an access record.
    assert AccessRecord.objects.filter(detail="training export").count() == 3


def test_since_and_scanner_filter_the_rows(
    media_root, site_key, tmp_path, radiologist, study, user
):
    scan = analysed_scan(study, user)
    _sign(scan, radiologist)
    out = tmp_path / "later"
    call_command("export_training_set", "--out", str(out), "--since", "2999-01-01")
    assert _rows(out) == []
    out = tmp_path / "philips"
    call_command("export_training_set", "--out", str(out), "--scanner", "Philips")
    assert _rows(out) == []  # a PNG upload names no scanner
    out = tmp_path / "all"
    call_command("export_training_set", "--out", str(out), "--scanner", "unknown")
    assert len(_rows(out)) == 1


@pytest.mark.parametrize(
    ("key", "args", "message"),
    [
        ("", [], "TRAINING_EXPORT_KEY must be set"),
        (KEY, ["--since", "last week"], "is not a date"),
    ],
)
def test_bad_input_is_refused_with_a_reason(settings, tmp_path, key, args, message, db):
    settings.TRAINING_EXPORT_KEY = key
    with pytest.raises(CommandError, match=message):
        call_command("export_training_set", "--out", str(tmp_path / "x"), *args)


def test_an_existing_folder_is_not_overwritten(site_key, tmp_path, db):
    (tmp_path / "old").mkdir()
    Image.new("L", (2, 2)).save(tmp_path / "old" / "keep.png")
    with pytest.raises(CommandError, match="not empty"):
        call_command("export_training_set", "--out", str(tmp_path / "old"))

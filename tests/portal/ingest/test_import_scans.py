"""`manage.py import_scans`: folder trees into studies, safe to run again."""

from __future__ import annotations

import datetime
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from portal.analyses.models import Analysis
from portal.clinical.models import Patient, Scan, Study
from portal.ingest.models import UploadBatch
from tests.portal.ingest.factories import (
    GREY,
    assert_model_input_stored,
    dicom,
    png,
    zip_of,
)

pytestmark = pytest.mark.django_db


def run(*args: Any) -> str:
    out = io.StringIO()
    call_command(
        "import_scans", *args, "--no-progress", stdout=out, stderr=io.StringIO()
    )
    return out.getvalue()


def write(root: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


def test_a_folder_goes_into_one_study_and_a_second_run_imports_nothing(
    tmp_path, study, user, django_capture_on_commit_callbacks, enqueued
):
    root = write(
        tmp_path / "export",
        {
            "a.png": png(value=1),
            "left/b.png": png(value=2),
            "left/more.zip": zip_of([("c.png", png(value=3)), ("d.txt", b"notes")]),
            "right/readme.txt": b"hello",
        },
    )
    with django_capture_on_commit_callbacks(execute=True):
        first = run(str(root), "--study", str(study.pk), "--user", user.username)
    assert "3 accepted, 0 duplicates (already imported), 2 rejected" in first
    assert "rejected   left/more.zip/d.txt: not a recognised image" in first
    assert "rejected   right/readme.txt" in first
    assert study.scans.count() == 3 and len(enqueued) == 3

    with django_capture_on_commit_callbacks(execute=True):
        second = run(str(root), "--study", str(study.pk), "--user", user.username)
    assert "0 accepted, 3 duplicates (already imported), 2 rejected" in second
    assert Scan.objects.count() == 3 and Analysis.objects.count() == 3
    assert len(enqueued) == 3
    assert UploadBatch.objects.filter(source="import").count() == 2


def test_imported_scans_carry_the_model_input_the_worker_reads(tmp_path, study, user):
    root = write(
        tmp_path / "export",
        {"a.png": png(value=1), "b.zip": zip_of([("c.dcm", dicom())])},
    )
    run(str(root), "--study", str(study.pk), "--user", user.username)
    scans = list(study.scans.all())
    assert len(scans) == 2
    for scan in scans:
        assert_model_input_stored(scan)


def test_verbose_runs_list_every_file(tmp_path, study, user):
    root = write(tmp_path / "tree", {"a.png": png(value=4)})
    output = run(
        str(root), "--study", str(study.pk), "--user", user.username, "-v", "2"
    )
    assert "accepted   a.png -> scan" in output


def test_by_folder_places_images_by_patient_and_study_folders(tmp_path, user):
    root = write(
        tmp_path / "tree",
        {
            "H-100/ACC-1/one.png": png(value=10),
            "H-100/ACC-1/two.png": png(value=11),
            "H-100/ACC-2/three.png": png(value=12),
            "H-200/ACC-9.zip": zip_of([("x.png", png(value=13))]),
            "H-300/ACC-3/batch.zip": zip_of([("deep/y.png", png(value=14))]),
            "loose.png": png(value=15),
            "H-100/no-study.png": png(value=16),
        },
    )
    output = run(str(root), "--by-folder", "--user", user.username)
    assert "4 accepted" in output
    assert "loose.png: cannot tell which patient" in output
    assert "H-100/no-study.png: cannot tell which study" in output
    assert "H-200/ACC-9.zip/x.png: cannot tell which study" in output
    assert "no images in the zip" not in output
    h100 = Patient.objects.get(identifier="H-100")
    assert sorted(h100.studies.values_list("accession_number", flat=True)) == [
        "ACC-1",
        "ACC-2",
    ]
    assert h100.studies.get(accession_number="ACC-1").scans.count() == 2
    assert Study.objects.get(
        accession_number="ACC-3"
    ).scans.get().original_filename == ("deep/y.png")

    again = run(str(root), "--by-folder", "--user", user.username)
    assert "0 accepted, 4 duplicates" in again
    assert Patient.objects.count() == 2 and Study.objects.count() == 3


def test_by_folder_places_dicom_by_its_own_tags(tmp_path, user):
    uid = "1.2.826.0.1.3680043.2.1125.1"
    root = write(
        tmp_path / "tree",
        {
            "dump/1.dcm": dicom(GREY, patient_id="P-1", study_uid=uid, accession="A-7"),
            "dump/2.dcm": dicom(
                255 - GREY, patient_id="P-1", study_uid=uid, accession="A-7"
            ),
            "dump/3.dcm": dicom(
                np.stack([GREY, GREY // 2]),
                frames=2,
                patient_id="P-2",
                patient_name="Roe^Ann^^Dr",
            ),
            "dump/empty.dcm": dicom(None, patient_id="P-3"),
        },
    )
    output = run(str(root), "--by-folder", "--user", user.username)
    assert (
        "3 accepted" in output
        and "dump/empty.dcm: DICOM file has no pixel data" in output
    )
    p1 = Patient.objects.get(identifier="P-1")
    assert (p1.name, p1.birth_date) == ("Jane Example", datetime.date(1970, 1, 1))
    study = p1.studies.get()
    assert (study.study_instance_uid, study.accession_number) == (uid, "A-7")
    assert study.study_date == datetime.date(2026, 1, 5)
    assert study.scans.count() == 2
    assert Patient.objects.get(identifier="P-2").name == "Dr Ann Roe"
    assert not Patient.objects.filter(identifier="P-3").exists()
    run(str(root), "--by-folder", "--user", user.username)
    assert Patient.objects.count() == 2 and Study.objects.count() == 2


def test_a_dicom_for_another_patient_is_refused_in_study_mode(tmp_path, study, user):
    root = write(tmp_path / "tree", {"x.dcm": dicom(patient_id="SOMEONE-ELSE")})
    output = run(str(root), "--study", str(study.pk), "--user", user.username)
    assert "not this study's patient" in output and not Scan.objects.exists()


def test_links_are_not_followed(tmp_path, study, user):
    write(tmp_path / "root", {"a.png": png(value=20)})
    outside = write(tmp_path / "outside", {"secret.png": png(value=21)})
    (tmp_path / "root" / "link.png").symlink_to(outside / "secret.png")
    output = run(
        str(tmp_path / "root"), "--study", str(study.pk), "--user", user.username
    )
    assert "link.png: symbolic link" in output and "1 accepted" in output


def test_a_single_file_can_be_imported(tmp_path, study, staff_user):
    path = write(tmp_path, {"one.png": png(value=30)}) / "one.png"
    assert "1 accepted" in run(str(path), "--study", str(study.pk))  # first superuser


def test_clear_errors_for_bad_arguments(tmp_path, study, user, weights_dir):
    with pytest.raises(CommandError, match="does not exist"):
        run(
            str(tmp_path / "missing"), "--study", str(study.pk), "--user", user.username
        )
    with pytest.raises(CommandError, match="no study with id 999"):
        run(str(tmp_path), "--study", "999", "--user", user.username)
    with pytest.raises(CommandError, match="no active user"):
        run(str(tmp_path), "--study", str(study.pk), "--user", "ghost")
    with pytest.raises(CommandError, match="give --user"):
        run(str(tmp_path), "--study", str(study.pk))
    (weights_dir / "model.json").unlink()
    with pytest.raises(CommandError, match="model.json"):
        run(str(tmp_path), "--study", str(study.pk), "--user", user.username)

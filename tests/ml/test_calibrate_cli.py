"""``python -m ml calibrate``: the same SiteCalibration the portal fits, from predict's JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from ml.config import CLASSES, REPO_DIR, weights_dir
from ml.site_calibration import SiteCalibration, fit_site_calibration
from ml.weights_io import read_meta

MODEL = read_meta(weights_dir())


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ml", "calibrate", *args],
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def site(tmp_path):
    rng = np.random.default_rng(7)
    n = 150
    labels = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + 2.5 * np.eye(3)[labels]
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    rows = ["filename,label,patient"]
    for i in range(n):
        name = f"scan{i:03d}"
        payload = {
            "label": "benign",
            "logits": logits[i].tolist(),
            "withheld": False,
            "model_version": MODEL.version,
        }
        (predictions / f"{name}.json").write_text(json.dumps(payload))
        rows.append(f"{name},{CLASSES[labels[i]]},p{i // 3}")
    # A withheld image (not a breast ultrasound) is listed too: it is left out.
    (predictions / "photo.json").write_text(
        json.dumps({"logits": [9.0, 0.0, 0.0], "withheld": True})
    )
    rows.append("photo,normal,p999")
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    return predictions, csv_path, logits, labels


def test_it_fits_the_calibration_the_library_fits(site, tmp_path):
    predictions, csv_path, logits, labels = site
    out, report = tmp_path / "site.json", tmp_path / "report.json"
    completed = _run(
        "--predictions", str(predictions), "--labels", str(csv_path),
        "--out", str(out), "--target-sensitivity", "0.85", "--report", str(report),
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert "1 withheld image" in completed.stdout
    written = SiteCalibration.from_dict(json.loads(out.read_text()))
    expected = fit_site_calibration(
        logits,
        labels,
        target_sensitivity=0.85,
        groups=[f"p{i // 3}" for i in range(150)],
        prior=SiteCalibration.from_training(
            temperature=MODEL.temperature, class_bias=MODEL.class_bias
        ),
    )
    assert written == expected
    assert written.calibration_id in completed.stdout
    evaluation = json.loads(report.read_text())
    assert evaluation["n"] == 150 and evaluation["groups"] == 50
    assert evaluation["calibration"]["calibration_id"] == written.calibration_id


def test_predictions_of_another_model_need_its_weights_or_no_prior(site, tmp_path):
    predictions, csv_path, logits, labels = site
    path = predictions / "scan004.json"
    path.write_text(
        json.dumps({**json.loads(path.read_text()), "model_version": "busnet-other"})
    )
    out = tmp_path / "site.json"
    args = (
        "--predictions",
        str(predictions),
        "--labels",
        str(csv_path),
        "--out",
        str(out),
    )
    refused = _run(*args)
    assert refused.returncode == 2 and not out.exists()
    assert "busnet-other" in refused.stderr and "--no-prior" in refused.stderr
    completed = _run(*args, "--no-prior")
    assert completed.returncode == 0, completed.stderr
    written = SiteCalibration.from_dict(json.loads(out.read_text()))
    assert written == fit_site_calibration(
        logits, labels, groups=[f"p{i // 3}" for i in range(150)]
    )


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda text: text.replace("filename,label", "name,label"), "filename,label"),
        (
            lambda text: text.replace("scan000,", "scan000,cyst,").replace(",,", ","),
            "not one of",
        ),
        (lambda text: text + "nosuchscan,benign,p1\n", "no prediction"),
        (lambda text: text + "scan001,benign,p1\n", "listed twice"),
    ],
)
def test_bad_labels_get_a_clear_error(site, tmp_path, edit, message):
    predictions, csv_path, _, _ = site
    csv_path.write_text(edit(csv_path.read_text()))
    completed = _run(
        "--predictions", str(predictions), "--labels", str(csv_path),
        "--out", str(tmp_path / "site.json"),
    )  # fmt: skip
    assert completed.returncode == 2
    assert message in completed.stderr
    assert not (tmp_path / "site.json").exists()


def test_predictions_without_logits_are_refused(site, tmp_path):
    predictions, csv_path, _, _ = site
    (predictions / "scan000.json").write_text(json.dumps({"label": "benign"}))
    completed = _run(
        "--predictions", str(predictions), "--labels", str(csv_path),
        "--out", str(tmp_path / "site.json"),
    )  # fmt: skip
    assert completed.returncode == 2
    assert "has no logits" in completed.stderr

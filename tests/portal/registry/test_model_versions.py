"""The model registry's services: install, promote (refused past a "worse" comparison
unless a second administrator confirms), roll back, shadow; who may, and the audit rows."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from tests.conftest import TEST_MODEL_VERSION, write_model_json

pytestmark = pytest.mark.django_db


def comparison(
    candidate: str, *, baseline: str = TEST_MODEL_VERSION, worse: tuple[str, ...] = ()
) -> dict[str, Any]:
    """A compare report as python -m ml compare writes it: every measure "not worse"
    on the site set, except those named in `worse`."""
    measures = {
        name: {
            "baseline": 0.8,
            "candidate": 0.7 if name in worse else 0.81,
            "difference": -0.1 if name in worse else 0.01,
            "ci95": [-0.2, -0.05] if name in worse else [-0.005, 0.03],
            "margin": 0.01,
            "verdict": "worse" if name in worse else "not worse",
        }
        for name in ("auc_malignant_vs_benign", "recall_malignant", "ece")
    }
    # A measure ml compare could not compute: NaN in its JSON, no verdict.
    measures["dice_lesion_mean"] = {
        "baseline": float("nan"),
        "candidate": float("nan"),
        "difference": float("nan"),
        "ci95": None,
        "margin": 0.01,
        "verdict": "n/a",
    }
    return {
        "rule": {"text": "the rule", "measures": {}},
        "baseline": baseline,
        "candidate": candidate,
        "rounds": 20,
        "sets": {"site:site-export": {"n": 12, "patients": 6, "measures": measures}},
    }


def model_folder(
    root: Path, seed: str, *, report: bool = True, **compared: Any
) -> Path:
    """A fine-tuned model's folder: weights bytes, a model.json whose version is the
    name and their sha256 (as ml.weights_io.save names it) and, with `report`, a compare
    report (comparison(version, **compared))."""
    folder = root / f"out-{seed}"
    folder.mkdir(parents=True)
    weights = f"weights of {seed}".encode()
    (folder / "weights.npz").write_bytes(weights)
    digest = hashlib.sha256(weights).hexdigest()
    version = f"busnet-lite0-{digest[:12]}"
    write_model_json(
        folder,
        version,
        weights_sha256=digest,
        training={
            "sources": ["busi"],
            "finetuned_from": {"version": TEST_MODEL_VERSION},
            "site_sources": [
                {
                    "name": "site-export",
                    "source_sha256": "ab" * 32,
                    "images": 9,
                    "patients": 9,
                    "split": {"train": 5, "val": 2, "test": 2},
                    "without_outline": 0,
                }
            ],
        },
    )
    if report:
        (folder / "compare_report.json").write_text(
            json.dumps(comparison(version, **compared))
        )
    return folder


@pytest.fixture(autouse=True)
def models_dir(settings: Any, tmp_path: Path) -> Path:
    settings.ML_MODELS_DIR = tmp_path / "models"
    return settings.ML_MODELS_DIR


@pytest.fixture
def admin(make_user: Any) -> Any:
    return make_user("administrator", "admin-one")


@pytest.fixture
def second_admin(make_user: Any) -> Any:
    return make_user("administrator", "admin-two")


@pytest.fixture
def install(tmp_path: Path, admin: Any):
    from portal.registry.services import model_version_install

    def make(seed: str, **kwargs: Any) -> Any:
        folder = model_folder(tmp_path / "made", seed, **kwargs)
        return model_version_install(source=folder, installed_by=admin)

    return make


def _log_entries(model: Any, pk: int) -> int:
    from auditlog.models import LogEntry
    from django.contrib.contenttypes.models import ContentType

    return LogEntry.objects.filter(
        content_type=ContentType.objects.get_for_model(model), object_pk=str(pk)
    ).count()


def test_installing_copies_the_folder_and_keeps_card_lineage_and_comparison(
    install, models_dir
):
    record = install("a")

    folder = models_dir / record.version
    assert sorted(p.name for p in folder.iterdir()) == [
        "compare_report.json",
        "model.json",
        "weights.npz",
    ]
    assert record.source == "installed"
    assert record.lineage["finetuned_from"] == {"version": TEST_MODEL_VERSION}
    assert record.lineage["site_sources"][0]["source_sha256"] == "ab" * 32
    assert record.comparison["candidate"] == record.version
    # NaN (a measure not computable) is kept as null: PostgreSQL's JSON has no NaN.
    site = record.comparison["sets"]["site:site-export"]["measures"]
    assert site["dice_lesion_mean"]["baseline"] is None
    assert record.card["version"] == record.version and "training" not in record.card


def test_installing_refuses_weights_that_are_not_the_version_they_claim(
    tmp_path, admin, models_dir
):
    from portal.registry.services import model_version_install

    folder = model_folder(tmp_path, "b")
    (folder / "weights.npz").write_bytes(b"other bytes")

    with pytest.raises(ValidationError, match="does not match the sha256"):
        model_version_install(source=folder, installed_by=admin)
    assert not models_dir.exists() or not any(models_dir.iterdir())


def test_installing_the_same_version_twice_is_refused(install, tmp_path, admin):
    from portal.registry.services import model_version_install

    install("c")
    with pytest.raises(ValidationError, match="installed already"):
        model_version_install(source=tmp_path / "made" / "out-c", installed_by=admin)


def test_an_install_that_fails_to_record_leaves_nothing_behind(
    tmp_path, admin, models_dir, monkeypatch
):
    """The database refuses the record after the folder was copied: no folder is left
    to block installing again."""
    from django.db import OperationalError

    from portal.registry.models import ModelVersion
    from portal.registry.services import model_version_install

    folder = model_folder(tmp_path / "made", "crash")
    create = ModelVersion.objects.create

    def lost_connection(**fields: Any) -> Any:
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(ModelVersion.objects, "create", lost_connection)
    with pytest.raises(OperationalError):
        model_version_install(source=folder, installed_by=admin)
    assert [p.name for p in models_dir.iterdir()] == []

    monkeypatch.setattr(ModelVersion.objects, "create", create)
    record = model_version_install(source=folder, installed_by=admin)
    assert (models_dir / record.version / "weights.npz").is_file()


def test_a_folder_left_by_an_install_killed_before_recording_is_adopted(
    tmp_path, admin, models_dir
):
    """The process died between copying and recording (nothing could clean up): the
    next install of the same version checks the folder's bytes and records it."""
    from portal.registry import installed
    from portal.registry.services import model_version_install

    folder = model_folder(tmp_path / "made", "killed")
    left = installed.copy_in(folder)  # copied, never recorded

    record = model_version_install(source=folder, installed_by=admin)

    assert record.version == left.described.version
    assert record.weights_sha256 == left.described.weights_sha256
    assert sorted(p.name for p in models_dir.iterdir()) == [record.version]


def test_a_leftover_folder_that_is_not_the_version_is_not_adopted(
    tmp_path, admin, models_dir
):
    from portal.registry import installed
    from portal.registry.models import ModelVersion
    from portal.registry.services import model_version_install

    folder = model_folder(tmp_path / "made", "tampered")
    left = installed.copy_in(folder)
    (left.directory / "weights.npz").write_bytes(b"something else")

    with pytest.raises(ValidationError, match="not an intact copy"):
        model_version_install(source=folder, installed_by=admin)
    assert not ModelVersion.objects.filter(version=left.described.version).exists()
    assert (left.directory / "weights.npz").read_bytes() == b"something else"


def test_promoting_makes_new_analyses_by_the_new_version_and_keeps_old_ones(
    install, admin, study, user
):
    from portal.analyses.modelinfo import current_model_version
    from portal.analyses.models import Analysis
    from portal.analyses.services import analysis_create
    from portal.clinical.models import Scan
    from portal.registry.models import ModelActivation
    from portal.registry.selectors import model_version_active
    from portal.registry.services import model_promote
    from tests.portal.review.conftest import analysed_scan

    before = analysed_scan(study, user, filename="before.png").analyses.get()
    record = install("d")

    activation = model_promote(model_version=record, user=admin, reason="site tuned")

    assert model_version_active() == current_model_version() == record.version
    assert activation.activated_by == admin and activation.reason == "site tuned"
    assert activation.confirmed_by is None and activation.overrode == []
    new = analysis_create(scan=Scan.objects.get(pk=before.scan_id))
    assert new.model_version == record.version
    assert Analysis.objects.get(pk=before.pk).model_version == TEST_MODEL_VERSION
    assert _log_entries(ModelActivation, activation.pk) == 1


def test_a_promotion_needs_a_reason(install, admin):
    from portal.registry.services import model_promote

    record = install("e")
    with pytest.raises(ValidationError, match="reason"):
        model_promote(model_version=record, user=admin, reason="  ")


@pytest.mark.parametrize(
    "report, concern",
    [
        ("worse", "worse on site:site-export: recall_malignant"),
        (None, "has no comparison report"),
        ("other baseline", "not the active test-model-1"),
    ],
)
def test_a_promotion_the_comparison_does_not_support_is_refused(
    install, admin, report, concern
):
    from portal.registry.models import ModelActivation
    from portal.registry.selectors import model_version_active
    from portal.registry.services import PromotionNeedsConfirmation, model_promote

    if report == "worse":
        record = install("f", worse=("recall_malignant",))
    elif report == "other baseline":
        record = install("f", baseline="busnet-lite0-other")
    else:
        record = install("f", report=False)

    with pytest.raises(PromotionNeedsConfirmation) as refused:
        model_promote(model_version=record, user=admin, reason="try")

    assert any(concern in c for c in refused.value.concerns), refused.value.concerns
    assert model_version_active() == TEST_MODEL_VERSION
    assert not ModelActivation.objects.exists()


def test_a_second_different_administrator_confirms_a_refused_promotion(
    install, tmp_path, admin, second_admin
):
    from portal.registry.models import ModelActivation, PromotionRequest
    from portal.registry.selectors import model_version_active
    from portal.registry.services import (
        model_promotion_confirm,
        model_promotion_request,
        model_version_install,
    )

    folder = model_folder(tmp_path / "made", "g", worse=("ece",))
    record = model_version_install(source=folder, installed_by=admin)
    request = model_promotion_request(
        model_version=record, user=admin, reason="ECE is fixed by the site calibration"
    )
    assert request.concerns == ["worse on site:site-export: ece"]

    with pytest.raises(PermissionDenied, match="second administrator"):
        model_promotion_confirm(request=request, user=admin)
    assert model_version_active() == TEST_MODEL_VERSION

    activation = model_promotion_confirm(request=request, user=second_admin)

    assert model_version_active() == record.version
    assert activation.activated_by == admin and activation.confirmed_by == second_admin
    assert activation.overrode == ["worse on site:site-export: ece"]
    request.refresh_from_db()
    assert request.status == PromotionRequest.Status.CONFIRMED
    assert request.decided_by == second_admin and request.activation == activation
    assert _log_entries(ModelActivation, activation.pk) == 1
    assert _log_entries(PromotionRequest, request.pk) >= 1
    with pytest.raises(ValidationError, match="no longer waiting|active version"):
        model_promotion_confirm(request=request, user=second_admin)


def test_only_administrators_promote_roll_back_or_shadow(install, make_user, admin):
    from portal.registry.models import ModelActivation
    from portal.registry.services import (
        model_promote,
        model_rollback,
        model_shadow_set,
    )

    record = install("h")
    for role in ("staff", "radiologist", None):
        someone = make_user(role, f"not-admin-{role}")
        with pytest.raises(PermissionDenied):
            model_promote(model_version=record, user=someone, reason="r")
        with pytest.raises(PermissionDenied):
            model_rollback(user=someone, reason="r")
        with pytest.raises(PermissionDenied):
            model_shadow_set(model_version=record, user=someone, reason="r")
    assert not ModelActivation.objects.exists()


def test_rolling_back_returns_to_the_version_active_before(install, admin):
    from portal.registry.models import ModelActivation
    from portal.registry.selectors import model_version_active
    from portal.registry.services import model_promote, model_rollback

    with pytest.raises(ValidationError, match="nothing to roll back"):
        model_rollback(user=admin, reason="r")
    first = install("i")
    model_promote(model_version=first, user=admin, reason="first")

    back = model_rollback(user=admin, reason="more false negatives")

    assert model_version_active() == TEST_MODEL_VERSION
    assert back.action == ModelActivation.Action.ROLLBACK
    assert back.model_version.source == "shipped"
    assert back.reason == "more false negatives"
    # The log is append-only: two rows, the newest says what is active.
    assert [a.model_version.version for a in ModelActivation.objects.all()] == [
        TEST_MODEL_VERSION,
        first.version,
    ]
    assert _log_entries(ModelActivation, back.pk) == 1


def test_a_version_whose_weights_are_gone_is_not_promoted(install, admin, models_dir):
    import shutil

    from portal.registry.services import model_promote

    record = install("j")
    shutil.rmtree(models_dir / record.version)
    with pytest.raises(ValidationError, match="not in ML_MODELS_DIR"):
        model_promote(model_version=record, user=admin, reason="r")


def test_a_shadow_runs_beside_the_active_one_and_stops_when_promoted(install, admin):
    from portal.registry.models import ModelActivation
    from portal.registry.selectors import model_version_shadow
    from portal.registry.services import model_promote, model_shadow_set

    record = install("k")
    model_shadow_set(model_version=record, user=admin, reason="watch it")
    assert model_version_shadow() == record.version
    with pytest.raises(ValidationError, match="shadow already"):
        model_shadow_set(model_version=record, user=admin, reason="again")

    model_promote(model_version=record, user=admin, reason="it did well")

    assert model_version_shadow() is None
    roles = list(ModelActivation.objects.values_list("role", "action"))
    assert roles[:2] == [("shadow", "shadow"), ("active", "promote")]


def test_the_active_version_cannot_be_its_own_shadow(admin):
    from portal.registry.services import (
        model_shadow_set,
        model_version_register_shipped,
    )

    shipped = model_version_register_shipped()
    with pytest.raises(ValidationError, match="its own shadow"):
        model_shadow_set(model_version=shipped, user=admin, reason="r")


def _status_changes(request: Any) -> list[Any]:
    """The audit trail's record of a promotion request's status changing."""
    from auditlog.models import LogEntry

    return [
        entry.changes_dict["status"]
        for entry in LogEntry.objects.get_for_object(request)
        if entry.action == LogEntry.Action.UPDATE and "status" in entry.changes_dict
    ]


def test_confirming_or_withdrawing_a_promotion_request_is_audited(
    tmp_path, admin, second_admin
):
    from portal.registry.services import (
        model_promotion_confirm,
        model_promotion_request,
        model_promotion_withdraw,
        model_version_install,
    )

    worse = model_version_install(
        source=model_folder(tmp_path / "made", "m", worse=("ece",)), installed_by=admin
    )
    withdrawn = model_promotion_request(model_version=worse, user=admin, reason="r")
    model_promotion_withdraw(request=withdrawn, user=second_admin)
    assert _status_changes(withdrawn) == [["pending", "withdrawn"]]

    confirmed = model_promotion_request(model_version=worse, user=admin, reason="r")
    model_promotion_confirm(request=confirmed, user=second_admin)
    assert _status_changes(confirmed) == [["pending", "confirmed"]]


def test_an_archive_is_unpacked_by_base_name_from_its_top_or_one_folder(tmp_path):
    """Members at the top or in one folder (either separator) are taken by their own
    name; deeper ones and other files are left out, never written."""
    import io
    import zipfile

    from portal.registry import installed

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("out\\model.json", b"{}")
        bundle.writestr("weights.npz", b"w")
        bundle.writestr("a/b/compare_report.json", b"deep")
        bundle.writestr("out/readme.txt", b"other")
    into = tmp_path / "into"
    into.mkdir()
    left_out = installed.unpack(io.BytesIO(buffer.getvalue()), into, max_bytes=100)
    assert sorted(p.name for p in into.iterdir()) == ["model.json", "weights.npz"]
    assert (into / "model.json").read_bytes() == b"{}"
    assert sorted(left_out) == ["a/b/compare_report.json", "out/readme.txt"]

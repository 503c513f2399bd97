"""``python -m ml loso --fold NAME``: a fold's row is merged into the report with the
schedule that trained it, and its held-out outputs are saved. Training and the network are
replaced by fakes here (a real fold takes hours on two cores); the report logic is real."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ml.training import loso
from ml.training.model_card import _loso_table, schedule_text

LEGACY = {"epochs": 12, "frozen_epochs": 1, "augment": True, "image_size": 256}


def _results(n: int = 12) -> dict:
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 3
    probabilities = rng.dirichlet(np.ones(3), n)
    return {
        "labels": labels,
        "logits": np.log(probabilities),
        "probabilities": probabilities,
        "dice": rng.uniform(0, 1, n),
        "area": rng.uniform(0, 0.1, n),
        "ood_score": rng.uniform(0, 5, n),
        "groups": np.array([f"p{i // 2}" for i in range(n)]),
        "sources": np.array(["busi"] * n),
        "threshold": 10.0,
    }


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch):
    trained: list = []

    def fake_train(config):
        trained.append(config)
        config.out_dir.mkdir(parents=True, exist_ok=True)
        (config.out_dir / "model.json").write_text("{}")
        (config.out_dir / "training_summary.json").write_text(
            json.dumps({"config": {"epochs": config.epochs, "patience": 8}})
        )

    analyzer = SimpleNamespace(
        model_version="busnet-lite0-fake",
        meta=SimpleNamespace(
            training={"best_epoch": 20, "epochs_run": 24}, backbone="lite2"
        ),
        second_look=0.25,
    )
    import ml.inference

    monkeypatch.setattr(loso, "train", fake_train)
    monkeypatch.setattr(
        ml.inference.Analyzer, "load", classmethod(lambda cls, d: analyzer)
    )
    monkeypatch.setattr(
        loso, "held_out_paths", lambda source: [f"{source}/{i}.png" for i in range(12)]
    )
    monkeypatch.setattr(loso, "collect", lambda a, source, paths: _results())
    monkeypatch.setattr(
        loso,
        "heldout_outputs",
        lambda a, source, paths, results: {
            "paths": np.asarray(paths),
            "labels": results["labels"],
        },
    )
    return trained


def test_one_fold_is_merged_with_its_schedule_and_the_others_kept(
    tmp_path: Path, fakes
):
    report_path = tmp_path / "loso.json"
    old_row = {"trained_on": ["a", "b"], "metrics": {"n": {"value": 640, "ci95": None}}}
    report_path.write_text(
        json.dumps(
            {"schedule": LEGACY, "folds": {"busi": old_row, "bus-uclm": old_row}}
        )
    )
    report = loso.leave_one_source_out(
        tmp_path / "work",
        report_path,
        epochs=24,
        frozen_epochs=2,
        patience=8,
        held_out=("busi",),
        rounds=5,
    )
    assert [config.epochs for config in fakes] == [24]
    assert fakes[0].sources == ("bus-uclm", "breast-lesions-usg")
    saved = json.loads(report_path.read_text())
    assert saved == json.loads(json.dumps(report))
    assert "schedule" not in saved  # every row carries its own
    assert saved["folds"]["bus-uclm"]["schedule"] == LEGACY  # the old row kept
    busi = saved["folds"]["busi"]
    assert busi["schedule"]["epochs"] == 24 and busi["schedule"]["patience"] == 8
    assert busi["schedule"]["second_look"] == 0.25  # how its held-out scans were read
    # The encoder is the weights' own, not the command line's default.
    assert busi["schedule"]["backbone"] == "lite2"
    assert busi["model_version"] == "busnet-lite0-fake" and busi["images"] == 12
    assert busi["metrics"]["n"]["value"] == 12
    with np.load(tmp_path / "work" / "without-busi" / loso.HELDOUT_FILE) as heldout:
        assert heldout["paths"].tolist() == [f"busi/{i}.png" for i in range(12)]

    table = _loso_table(saved)
    assert (
        "| busi | 24 epochs, 2 frozen; patience 8; EfficientNet-Lite2; second look 0.25 |"
        in table
    )
    assert "| bus-uclm | 12 epochs, 1 frozen |" in table


def test_resume_reuses_a_trained_fold_and_records_its_own_schedule(
    tmp_path: Path, fakes
):
    fold = tmp_path / "work" / "without-bus-uclm"
    fold.mkdir(parents=True)
    (fold / "model.json").write_text("{}")
    (fold / "training_summary.json").write_text(
        json.dumps({"config": {"epochs": 24, "frozen_epochs": 2, "patience": 8}})
    )
    report = loso.leave_one_source_out(
        tmp_path / "work",
        tmp_path / "loso.json",
        held_out=("bus-uclm",),
        rounds=5,
        resume=True,
    )
    assert fakes == []  # not trained again
    assert report["folds"]["bus-uclm"]["schedule"]["epochs"] == 24


def test_schedule_text_names_what_differs_from_production():
    assert schedule_text(None) == "not recorded"
    assert (
        schedule_text(
            {"epochs": 12, "frozen_epochs": 1, "image_size": 320, "augment": False}
        )
        == "12 epochs, 1 frozen; 320 px; no augmentation"
    )
    assert (
        schedule_text({"epochs": 24, "frozen_epochs": 2, "second_look": 0.25})
        == "24 epochs, 2 frozen; second look 0.25"
    )


def test_heldout_outputs_of_the_real_network_line_up_with_collect(busi, tmp_path):
    """The extra look at the network (plain and mirrored) matches the Analyzer's logits
    when it looks once (the whole scan's pass; the second look averages in another)."""
    import dataclasses

    from ml.inference import Analyzer
    from ml.training.evaluate import collect

    loaded = Analyzer.load()
    analyzer = Analyzer(
        loaded._model, dataclasses.replace(loaded.meta, second_look=None)
    )
    paths = loso.held_out_paths("busi")[::200][:4]
    results = collect(analyzer, "busi", paths)
    outputs = loso.heldout_outputs(analyzer, "busi", paths, results)
    np.testing.assert_allclose(outputs["net_logits"], results["logits"], atol=1e-3)
    assert outputs["net_logits_flip"].shape == (4, 3)
    assert not np.allclose(outputs["net_logits_flip"], outputs["net_logits"])
    size = analyzer.image_size
    assert outputs["lesion"].shape == outputs["lesion_flip"].shape == (4, size, size)
    assert outputs["lesion"].dtype == np.uint8
    assert outputs["groups"].tolist() == results["groups"].tolist()
    assert np.all(outputs["lesion_max"] >= outputs["lesion_mean_in_mask"])


def test_ablation_rows_judged_without_folds_are_listed_with_their_command(tmp_path):
    from ml.training.model_card import _ablation_section

    (tmp_path / "ablation.json").write_text(
        json.dumps(
            {
                "no augmentation": {"schedule": LEGACY, "folds": {}},
                "flip TTA": {
                    "result": "AUC 0.90 -> 0.91 on the test splits; not adopted",
                    "command": "python -m ml.training.posthoc judge --fit a --test b",
                },
            }
        )
    )
    text = _ablation_section(tmp_path, {"folds": {}})
    assert (
        "- **flip TTA**: AUC 0.90 -> 0.91 on the test splits; not adopted "
        "(`python -m ml.training.posthoc judge --fit a --test b`)" in text
    )


def test_fine_tuning_rows_name_their_recipe_and_k(tmp_path):
    """The first recipe's rows (no guard fields, key '<k>-first') stay beside the guarded
    recipe's, each row saying which recipe made it and on which fold model."""
    from ml.training.model_card import _loso_finetune_section

    def row(**recipe) -> dict:
        measure = {
            "baseline": 0.8,
            "candidate": 0.82,
            "difference": 0.02,
            "ci95": [0.0, 0.04],
            "verdict": "not worse",
        }
        return {
            "baseline": "busnet-lite0-0123456789ab",
            **recipe,
            "sets": {
                "site:site-busi": {
                    "n": 578,
                    "auc_malignant_vs_benign": measure,
                    "dice_lesion_mean": measure,
                    "ece": measure,
                }
            },
        }

    report = {
        "folds": {
            "busi": {
                "200-first": row(),
                "200": row(freeze_batchnorm=True, blend=0.5),
                "200-l2sp": row(
                    baseline="busnet-lite0-ba9876543210",
                    freeze_batchnorm=True,
                    blend=1.0,
                    blend_rule="each original source",
                    anchor_strength=0.1,
                ),
            }
        }
    }
    (tmp_path / "loso_finetune.json").write_text(json.dumps(report))
    table = [
        line
        for line in _loso_finetune_section(tmp_path).splitlines()
        if line.startswith("| busi")
    ]
    assert [line.split(" | ")[1:4] for line in table] == [
        ["0123456789ab", "200", "first (no guards)"],
        ["0123456789ab", "200", "guarded, blend 0.50"],
        [
            "ba9876543210",
            "200",
            "guarded, blend 1.00 (rule: each original source), L2-SP 0.1",
        ],
    ]


def _averaged_fold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, best_version: str):
    """A trained, averaged busi fold with a best epoch beside it holding ``best_version``;
    the averaged model scores every held-out image's Dice 0.1 higher."""
    fold = tmp_path / "work" / "without-busi"
    (fold / "best-epoch").mkdir(parents=True)
    for directory in (fold, fold / "best-epoch"):
        (directory / "model.json").write_text("{}")
    (fold / "training_summary.json").write_text(
        json.dumps({"config": {"epochs": 24, "patience": 8, "average_from": 13}})
    )
    averaged = SimpleNamespace(
        model_version="busnet-lite0-averaged",
        meta=SimpleNamespace(
            backbone="lite0",
            training={
                "best_epoch": 15,
                "weight_average": {
                    "epochs": [13, 14, 15],
                    "best_epoch_model": "busnet-lite0-best",
                },
            },
        ),
        second_look=None,
    )
    best = SimpleNamespace(model_version=best_version, second_look=None)
    import ml.inference

    monkeypatch.setattr(
        ml.inference.Analyzer,
        "load",
        classmethod(lambda cls, d: best if Path(d).name == "best-epoch" else averaged),
    )
    better = _results()
    worse = dict(better, dice=better["dice"] - 0.1)
    monkeypatch.setattr(
        loso,
        "collect",
        lambda a, source, paths: better if a is averaged else worse,
    )
    return fold


def test_averaged_fold_is_compared_with_the_same_runs_best_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fakes
):
    """With weight averaging the fold model is the average; the row also carries the paired
    comparison with the best epoch kept beside it, on the same held-out images."""
    fold = _averaged_fold(tmp_path, monkeypatch, "busnet-lite0-best")
    report = loso.leave_one_source_out(
        tmp_path / "work",
        tmp_path / "loso.json",
        held_out=("busi",),
        rounds=20,
        resume=True,
    )
    row = report["folds"]["busi"]
    assert fakes == []
    assert row["model_version"] == "busnet-lite0-averaged"
    assert row["schedule"]["average_from"] == 13
    comparison = row["weight_average"]
    assert comparison["best_epoch_model"] == "busnet-lite0-best"
    assert comparison["averaged_epochs"] == [13, 14, 15]
    dice = comparison["measures"]["dice_lesion_mean"]
    assert dice["difference"] == pytest.approx(0.1)  # averaged minus best epoch
    assert dice["verdict"] == "better"
    assert comparison["measures"]["auc_malignant_vs_benign"]["difference"] == 0.0
    patient = comparison["patient_auc"]
    assert patient["best_epoch"] == patient["averaged"]  # the same probabilities
    assert 0.0 <= patient["averaged"] <= 1.0
    assert "weights averaged from epoch 13" in _loso_table(report)
    for directory in (fold, fold / "best-epoch"):  # both models' held-out outputs kept
        assert (directory / loso.HELDOUT_FILE).is_file()


def test_an_averaged_fold_is_not_compared_with_another_runs_best_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fakes
):
    """A best-epoch/ left by another run (the averaged model names its own) is refused, not
    compared."""
    _averaged_fold(tmp_path, monkeypatch, "busnet-lite0-an-earlier-run")
    with pytest.raises(RuntimeError, match="not the best epoch"):
        loso.leave_one_source_out(
            tmp_path / "work",
            tmp_path / "loso.json",
            held_out=("busi",),
            rounds=5,
            resume=True,
        )


def _averaged_row(**differences) -> dict:
    measures = {
        name: {
            "baseline": 0.8,
            "candidate": 0.8 + differences.get(name, 0.0),
            "difference": differences.get(name, 0.0),
            "ci95": [
                differences.get(name, 0.0) - 0.02,
                differences.get(name, 0.0) + 0.02,
            ],
        }
        for name in (
            "auc_malignant_vs_benign",
            "dice_lesion_mean",
            "recall_normal",
            "recall_malignant",
            "ece",
        )
    }
    return {
        "model_version": "busnet-lite0-avg",
        "schedule": {"epochs": 24, "frozen_epochs": 2, "average_from": 13},
        "metrics": {
            name: {"value": m["candidate"], "ci95": None}
            for name, m in measures.items()
        },
        "weight_average": {
            "best_epoch_model": "busnet-lite0-best",
            "averaged_epochs": [13, 14, 15],
            "patient_auc": {"best_epoch": 0.8, "averaged": 0.85},
            "measures": measures,
        },
    }


def test_the_weight_averaging_rule_needs_two_folds_and_no_loss_beyond_its_floors(
    tmp_path: Path,
):
    from ml.training.model_card import _ablation_section, _weight_average_section

    gain = _averaged_row(auc_malignant_vs_benign=0.01, dice_lesion_mean=0.002)
    one = {"folds": {"busi": gain}}
    assert loso.weight_average_verdict(one)[0] is None  # one fold is not enough
    assert loso.weight_average_verdict({"folds": {"busi": gain, "bus-uclm": gain}})[0]
    dice_drop = _averaged_row(auc_malignant_vs_benign=0.05, dice_lesion_mean=-0.006)
    adopted, reasons = loso.weight_average_verdict(
        {"folds": {"busi": gain, "bus-uclm": dice_drop}}
    )
    assert adopted is False
    assert reasons == ["dice_lesion_mean -0.006 < -0.005 when bus-uclm is held out"]
    nothing = _averaged_row()  # no loss and no gain: not adopted either
    adopted, reasons = loso.weight_average_verdict(
        {"folds": {"busi": nothing, "bus-uclm": nothing}}
    )
    assert adopted is False and "gain" in reasons[0]

    (tmp_path / "weight_average.json").write_text(json.dumps(one))
    section = _weight_average_section(tmp_path)
    assert "**Not yet judged**: 1 of at least 2 folds judged" in section
    assert (
        "| busi | best / avg | 13-15 (3) | 0.800 → 0.810 (+0.010 [-0.010, +0.030])"
        in section
    )
    assert section.rstrip().endswith("| 0.800 → 0.850 |")  # per patient, last column
    assert (
        "`python -m ml loso --average-from 13`" in section
    )  # from the folds' schedule
    # The ablation table lists the averaged folds from the same report, not a copy.
    ablation = _ablation_section(tmp_path, {"folds": {}})
    assert "| weights averaged from epoch 13 (SWA;" in ablation
    assert "| busi | 0.810 |" in ablation


def _backbone_row(auc: float, dice: float) -> dict:
    return {
        "model_version": "busnet-lite2-abc",
        "schedule": {"epochs": 24, "frozen_epochs": 2, "backbone": "lite2"},
        "patient_auc": auc + 0.01,
        "metrics": {
            "auc_malignant_vs_benign": {"value": auc, "ci95": [auc - 0.03, auc + 0.03]},
            "dice_lesion_mean": {"value": dice, "ci95": None},
            "recall_normal": {"value": 0.7, "ci95": None},
            "recall_benign": {"value": 0.8, "ci95": None},
            "recall_malignant": {"value": 0.9, "ci95": None},
            "ece": {"value": 0.05, "ci95": None},
        },
    }


def test_a_larger_backbone_must_clear_the_lite0_trainings_mean_in_every_fold(
    tmp_path: Path,
):
    from ml.training.model_card import _backbone_section

    bars = loso.backbone_bars()
    # The bars are the recorded Lite0 trainings' means plus the rule's margins.
    assert round(bars["busi"]["auc_malignant_vs_benign"], 3) == 0.906
    assert round(bars["bus-uclm"]["auc_malignant_vs_benign"], 3) == 0.847
    assert round(bars["breast-lesions-usg"]["dice_lesion_mean"], 3) == 0.557
    clear = {
        source: _backbone_row(
            b["auc_malignant_vs_benign"] + 0.001, b["dice_lesion_mean"] + 0.001
        )
        for source, b in bars.items()
    }
    assert loso.backbone_verdict({"folds": clear}) == (
        True,
        ["every fold reaches both bars"],
    )
    two = {"folds": {k: v for k, v in clear.items() if k != "breast-lesions-usg"}}
    assert loso.backbone_verdict(two)[0] is None  # all three folds are needed
    short = dict(two["folds"], busi=_backbone_row(0.905, 0.70))
    adopted, reasons = loso.backbone_verdict({"folds": short})
    assert adopted is False  # one fold below its bar decides, whatever is missing
    assert reasons == ["auc_malignant_vs_benign 0.905 < 0.906 when busi is held out"]

    (tmp_path / "backbone_lite2.json").write_text(json.dumps({"folds": short}))
    section = _backbone_section(tmp_path)
    assert "**Not adopted**: auc_malignant_vs_benign 0.905 < 0.906" in section
    assert "| busi | 0.886 (0.860–0.911, 5) | 0.906 | 0.905 (0.88–0.94) | 0.915 |" in (
        section
    )
    assert (
        "| breast-lesions-usg | 0.749 (0.738–0.764, 3) | 0.769 | not run |" in section
    )

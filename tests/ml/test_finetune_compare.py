"""Fine-tuning on a site source in the export format, and the side-by-side comparison:
one epoch of a tiny model, the patient-grouped split written down, the lineage in
model.json, and the comparison's paired intervals and verdicts by the written rule."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml.training.compare import RULE, compare, verdict
from ml.training.finetune import (
    SITE_SPLIT_FILE,
    FinetuneConfig,
    choose_blend,
    finetune,
    source_sha256,
)

SIZE = 64  # a tiny network: the test is about the loop, not the model


def _site_source(root: Path, patients: int = 10) -> Path:
    """A folder as export_training_set writes it: two scans a patient, one row in three
    without an outline (classification only)."""
    rng = np.random.default_rng(7)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    classes = ("normal", "benign", "malignant")
    for p in range(patients):
        for s in range(2):
            name = f"{p:02d}{s}"
            label = classes[(p + s) % 3]
            pixels = rng.integers(40, 90, (60, 80, 3), dtype=np.uint8)
            mask = np.zeros((60, 80), bool)
            if label != "normal":
                mask[15:40, 20:55] = True
                pixels[mask] = 20 if label == "benign" else 160
            Image.fromarray(pixels).save(root / f"images/{name}.png")
            segmentation = (
                "none"
                if label != "normal" and p % 3 == 0
                else ("reader" if label != "normal" else "no_lesion")
            )
            mask_path = ""
            if segmentation != "none":
                mask_path = f"masks/{name}.png"
                Image.fromarray(mask.astype(np.uint8) * 255).save(root / mask_path)
            rows.append(
                {
                    "path": f"images/{name}.png",
                    "class": label,
                    "patient": f"key{p:02d}",
                    "mask_path": mask_path,
                    "scanner": "unknown",
                    "pixel_size": "",
                    "label_origin": "reader",
                    "segmentation": segmentation,
                    "width": 80,
                    "height": 60,
                }
            )
    with (root / "MANIFEST.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory, all_sources) -> Path:
    """Untrained tiny BUSNet weights that name the three original sources, with the
    committed ultrasound gate."""
    from ml import weights_io
    from ml.config import CLASSES, DEFAULT_WEIGHTS_DIR, MODEL_NAME
    from ml.model import build_busnet

    out = tmp_path_factory.mktemp("base")
    meta = weights_io.ModelMeta(
        name=MODEL_NAME,
        version="",
        image_size=SIZE,
        classes=list(CLASSES),
        training={"sources": list(all_sources)},
        gate=weights_io.read_meta(DEFAULT_WEIGHTS_DIR).gate,
    )
    weights_io.save(build_busnet(SIZE), out, meta)
    return out


def _one_epoch(
    base: Path, site: Path, out: Path, *, epoch_images: int = 16, **recipe
) -> dict:
    """One epoch of `epoch_images` draws of the tiny model on the site, with `recipe`'s
    guards."""
    return finetune(
        FinetuneConfig(
            base=base,
            site_sources=(site,),
            out_dir=out,
            epochs=1,
            epoch_images=epoch_images,
            batch_size=8,
            original_limit=3,
            augment=False,
            cache_dir=None,
            **recipe,
        )
    )


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, tiny_base) -> tuple[Path, Path, dict]:
    site = _site_source(tmp_path_factory.mktemp("site") / "hospital")
    out = tmp_path_factory.mktemp("tuned")
    return site, out, _one_epoch(tiny_base, site, out)


def test_one_epoch_writes_weights_with_their_lineage(tiny_base, tuned):
    from ml import weights_io
    from ml.inference import Analyzer

    site, out, summary = tuned
    base = weights_io.read_meta(tiny_base)
    analyzer = Analyzer.load(out)
    assert analyzer.model_version == summary["version"] != base.version
    training = analyzer.meta.training
    assert training["finetuned_from"]["version"] == base.version
    (info,) = training["site_sources"]
    assert info["source_sha256"] == source_sha256(site)
    assert info["images"] == 20 and info["patients"] == 10
    assert sum(info["split"].values()) == 20
    assert info["without_outline"] == 4  # patients 0, 3, 6, 9: their lesion rows
    assert training["epochs_run"] == 1
    # Calibration and out-of-distribution statistics are refitted.
    assert analyzer.ood is not None and np.isfinite(analyzer.ood.threshold)
    assert analyzer.temperature > 0
    # The gate judges the image, not the network: the base's is kept, not dropped.
    assert base.gate is not None and analyzer.meta.gate == base.gate
    assert analyzer.gate is not None
    (result,) = analyzer.analyze([np.full((60, 80, 3), 70, np.uint8)])
    assert result.lesion_mask.shape == (60, 80)


def _network(weights: Path):
    from ml import weights_io
    from ml.model import build_busnet

    model = build_busnet(SIZE)
    weights_io.load_into(model, weights)
    return model


def test_every_batch_norm_keeps_the_base_statistics_and_a_blend_is_chosen(
    tiny_base, tuned
):
    """The guards against forgetting: no batch-norm layer's statistics move (the
    decoder's and heads' included, not only the encoder's), and the weights shipped are
    the blend the rule chose among those tried, recorded with their validation figures."""
    import keras

    _, out, summary = tuned
    base, candidate = _network(tiny_base), _network(out)
    norms = [
        layer.name
        for layer in base.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert any(name.startswith("decoder") for name in norms)
    for name in norms:
        before, after = base.get_layer(name), candidate.get_layer(name)
        np.testing.assert_array_equal(before.moving_mean, after.moving_mean)
        np.testing.assert_array_equal(before.moving_variance, after.moving_variance)
    tried = [row["blend"] for row in summary["blends"]]
    assert tried == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert summary["blend"] in tried and summary["freeze_batchnorm"] is True
    if summary["blend"] == 0.0:  # nothing beat the base: its weights are shipped
        for before, after in zip(base.weights, candidate.weights, strict=True):
            np.testing.assert_array_equal(before, after)


def test_the_first_recipe_as_an_ablation_ships_the_tuned_weights(tmp_path, tiny_base):
    """No blends and moving batch norms: nothing is chosen, nothing is blended back, and
    the decoder's statistics moved with the site's batches."""
    import keras

    out = tmp_path / "first"
    site = _site_source(tmp_path / "hospital")
    summary = _one_epoch(tiny_base, site, out, freeze_batchnorm=False, blends=())
    assert summary["blend"] == 1.0 and summary["blends"] == []
    assert summary["blend_rule"] is None and summary["freeze_batchnorm"] is False
    base, candidate = _network(tiny_base), _network(out)
    moved = [
        layer.name
        for layer in base.layers
        if isinstance(layer, keras.layers.BatchNormalization)
        and layer.name.startswith("decoder")
        and not np.array_equal(
            layer.moving_mean, candidate.get_layer(layer.name).moving_mean
        )
    ]
    assert moved


def test_l2sp_holds_the_weights_nearer_the_base(tmp_path, tiny_base):
    """The same six steps (same seed, same draws, tuned weights shipped as they are) with
    the pull towards the base move the weights less than without it, and say so."""
    site = _site_source(tmp_path / "hospital")
    base = _network(tiny_base)

    def tune(name: str, anchor: float) -> tuple[dict, float]:
        summary = _one_epoch(
            tiny_base,
            site,
            tmp_path / name,
            epoch_images=48,
            learning_rate=1e-3,
            blends=(),
            anchor_strength=anchor,
        )
        tuned = _network(tmp_path / name)
        moved = sum(
            float(np.sum((np.asarray(b) - np.asarray(t)) ** 2))
            for b, t in zip(
                base.trainable_weights, tuned.trainable_weights, strict=True
            )
        )
        return summary, moved

    free, free_moved = tune("free", 0.0)
    held, held_moved = tune("held", 1000.0)
    assert free["anchor_strength"] == 0.0 and held["anchor_strength"] == 1000.0
    assert 0 < held_moved < 0.5 * free_moved


def _summary(auc, dice):
    return {
        "balanced_accuracy": 0.5,
        "auc_malignant_vs_benign": auc,
        "dice_lesion_mean": dice,
    }


def _blend_row(blend, site_auc, site_dice, original_auc, original_dice):
    return {
        "blend": blend,
        "site": _summary(site_auc, site_dice),
        "original": {"busi": _summary(original_auc, original_dice)},
    }


def test_the_blend_rule_keeps_the_original_sources_within_the_tolerance():
    rows = [
        _blend_row(0.0, 0.70, 0.60, 0.90, 0.75),
        _blend_row(0.5, 0.78, 0.66, 0.895, 0.742),  # loses 0.005 AUC, 0.008 Dice
        _blend_row(1.0, 0.85, 0.70, 0.90, 0.73),  # the best on the site, but -0.02 Dice
    ]
    assert choose_blend(rows, 0.01)["blend"] == 0.5
    assert choose_blend(rows, 0.05)["blend"] == 1.0
    # Nothing qualifies but the base: the base is shipped.
    assert choose_blend(rows, 0.001)["blend"] == 0.0


def test_the_blend_rule_binds_on_each_original_source_not_their_pool():
    """A large source's loss is not hidden by a small one's gain."""
    rows = [
        _blend_row(0.0, 0.70, 0.60, 0.90, 0.70),
        _blend_row(0.5, 0.75, 0.62, 0.90, 0.695),
        _blend_row(1.0, 0.80, 0.64, 0.90, 0.686),  # busi -0.014 Dice
    ]
    for row, breast_dice in zip(rows, (0.64, 0.66, 0.676), strict=True):
        row["original"]["breast-lesions-usg"] = _summary(0.88, breast_dice)
    assert choose_blend(rows, 0.01)["blend"] == 0.5


def test_the_blend_rule_prefers_the_smaller_blend_on_a_tie_and_skips_unscored():
    rows = [
        _blend_row(0.0, 0.70, 0.60, float("nan"), 0.75),
        _blend_row(0.25, 0.80, 0.60, float("nan"), 0.75),
        _blend_row(
            0.75, 0.80, 0.60, 0.60, 0.75
        ),  # AUC the base had none of: not binding
    ]
    assert choose_blend(rows, 0.01)["blend"] == 0.25
    rows[2]["original"]["busi"]["dice_lesion_mean"] = float("nan")  # a Dice lost
    rows[1]["site"]["dice_lesion_mean"] = 0.4  # now below the base on the site
    assert choose_blend(rows, 0.01)["blend"] == 0.0


def test_the_site_split_is_written_down_and_grouped_by_patient(tuned):
    site, out, _ = tuned
    (split,) = json.loads((out / SITE_SPLIT_FILE).read_text()).values()
    assert split["source_sha256"] == source_sha256(site)
    parts = {part: set(split[part]) for part in ("train", "val", "test")}
    assert sum(map(len, parts.values())) == 20
    patient_of = {}
    with (site / "MANIFEST.csv").open() as handle:
        for row in csv.DictReader(handle):
            patient_of[row["path"]] = row["patient"]
    owners = {part: {patient_of[p] for p in paths} for part, paths in parts.items()}
    assert not owners["train"] & owners["test"]
    assert not owners["train"] & owners["val"]
    assert not owners["val"] & owners["test"]
    assert parts["test"] and parts["val"]


def test_a_split_of_k_site_images_holds_every_other_image_back(tmp_path):
    """The LOSO fine-tuning figure: about k images (whole patients) to train and val,
    the rest of the source held back; asking for all of it or none is refused."""
    from ml.training.finetune import site_split
    from ml.training.sources import register_source

    site = _site_source(tmp_path / "hospital", patients=30)
    name = register_source(site)
    split = site_split(name, seed=1, test=0.25, val=0.15, images=20)
    used = len(split["train"]) + len(split["val"])
    assert 16 <= used <= 24
    assert len(split["test"]) == 60 - used
    assert split["val"] and split["train"]
    patients = {}
    with (site / "MANIFEST.csv").open() as handle:
        for row in csv.DictReader(handle):
            patients[row["path"]] = row["patient"]
    held = {patients[p] for p in split["test"]}
    assert not held & {patients[p] for p in split["train"] + split["val"]}
    for bad in (0, 60):
        with pytest.raises(ValueError, match="hold back the rest"):
            site_split(name, seed=1, test=0.25, val=0.15, images=bad)


def test_a_source_without_an_outline_trains_the_classifier_only():
    import tensorflow as tf

    from ml.training.fit import loss_function

    loss_fn = loss_function(1.0, 0.0)
    masks = tf.ones((2, 8, 8, 1))
    outputs = {
        "class_logits": tf.zeros((2, 3)),
        "seg_logits": tf.fill((2, 8, 8, 1), -5.0),  # predicts no lesion: a bad seg loss
    }
    labels = tf.constant([1, 2])
    _, _, seg_known = loss_fn(labels, masks, outputs, tf.ones(2))
    _, _, seg_unknown = loss_fn(labels, masks, outputs, tf.zeros(2))
    _, _, default = loss_fn(labels, masks, outputs)
    assert float(seg_known) > 1.0
    assert float(seg_unknown) == pytest.approx(0.0)
    assert float(default) == pytest.approx(float(seg_known))


def test_the_site_share_of_draws():
    from ml.training.arrays import ArraySet
    from ml.training.fit import sampling_weights

    sources = np.array(["site"] * 3 + ["busi"] * 30 + ["bus-uclm"] * 20)
    labels = np.arange(len(sources)) % 3
    arrays = ArraySet(
        list(map(str, range(len(sources)))),
        np.zeros((len(sources), 1, 1, 3), np.uint8),
        np.zeros((len(sources), 1, 1), bool),
        labels,
        sources,
        sources,
    )
    weights = sampling_weights(arrays, {"site": 0.5})
    assert weights.sum() == pytest.approx(1.0)
    assert weights[sources == "site"].sum() == pytest.approx(0.5)
    # Without shares, a 3-image source would get far less.
    assert sampling_weights(arrays)[sources == "site"].sum() < 0.3


@pytest.mark.parametrize(
    ("interval", "expected"),
    [
        ((0.001, 0.05), "better"),
        ((0.0, 0.05), "not worse"),
        ((-0.01, 0.02), "not worse"),
        ((-0.0101, 0.02), "worse"),
        ((-0.2, -0.1), "worse"),
        (None, "n/a"),
        ((float("nan"), float("nan")), "n/a"),
    ],
)
def test_the_verdict_rule(interval, expected):
    assert verdict(interval, 0.01) == expected


def test_a_model_compared_with_itself_is_not_worse_and_not_better(tiny_base, tuned):
    site, out, _ = tuned
    report = compare(
        tiny_base,
        tiny_base,
        [site],
        out / "self.json",
        split_file=out / SITE_SPLIT_FILE,
        original_limit=2,
        rounds=50,
    )
    for result in report["sets"].values():
        for name, measure in result["measures"].items():
            if measure["verdict"] == "n/a":
                continue
            assert measure["difference"] == 0.0, name
            assert measure["ci95"] == (0.0, 0.0) or list(measure["ci95"]) == [0, 0]
            assert measure["verdict"] == "not worse"


def test_compare_reports_every_measure_on_the_held_back_and_original_sets(
    tiny_base, tuned, all_sources
):
    site, out, _ = tuned
    report = compare(tiny_base, out, [site], original_limit=2, rounds=50)
    assert report["candidate"] != report["baseline"]
    (split,) = json.loads((out / SITE_SPLIT_FILE).read_text()).values()
    site_set = report["sets"][f"site:site-{site.name}"]
    assert site_set["n"] == len(split["test"])
    assert set(report["sets"]) == {f"site:site-{site.name}"} | {
        f"original:{s}" for s in all_sources
    }
    for result in report["sets"].values():
        assert set(result["measures"]) == set(RULE)
        for measure in result["measures"].values():
            assert measure["verdict"] in {"better", "not worse", "worse", "n/a"}
    saved = json.loads((out / "compare_report.json").read_text())
    assert next(iter(saved)) == "rule"  # written ahead of the figures
    assert (out / "compare_report.md").read_text().count("| site:") == len(RULE)


def test_compare_refuses_an_export_that_is_not_the_one_split(
    tiny_base, tuned, tmp_path
):
    site, out, _ = tuned
    other = tmp_path / site.name
    shutil.copytree(site, other)
    first = min((other / "images").iterdir())
    Image.new("RGB", (80, 60)).save(first)  # one image changed since the split
    with pytest.raises(ValueError, match="not the export"):
        compare(tiny_base, out, [other], tmp_path / "r.json", original_sources=[])


def test_a_registered_site_source_is_not_one_of_the_original_sources(tmp_path):
    from ml.training.sources import SOURCES, get_source, register_source

    before = list(SOURCES)
    name = register_source(_site_source(tmp_path / "elsewhere", patients=2))
    # "All sources" (training defaults, the base's sources) still means the originals.
    assert list(SOURCES) == before and name not in SOURCES
    assert get_source(name).root() == (tmp_path / "elsewhere").resolve()
    with pytest.raises(ValueError, match="original sources"):
        register_source(_site_source(tmp_path / "x" / "busi", patients=2), "busi")

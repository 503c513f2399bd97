from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ml.config import CLASSES, DEFAULT_WEIGHTS_DIR, REPO_DIR
from ml.decode import decode_image
from ml.inference import Analyzer, ModelLoadError
from ml.model_input import from_npy, model_input, to_npy
from ml.weights_io import sha256_of
from tests.conftest import SCANS_DIR

# Real scans kept with the tests (tests/fixtures/scans/README.md): no dataset needed.
# Three sizes, grey PNG and RGB JPEG.
SAMPLES = (
    "normal/case209.png",
    "benign/case014.jpg",
    "malignant/case050.png",
)


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return Analyzer.load(DEFAULT_WEIGHTS_DIR)


def test_the_committed_weights_match_their_version():
    meta = json.loads((DEFAULT_WEIGHTS_DIR / "model.json").read_text())
    digest = sha256_of(DEFAULT_WEIGHTS_DIR / "weights.npz")
    assert meta["version"] == f"busnet-lite0-{digest[:12]}"
    size = sum(p.stat().st_size for p in DEFAULT_WEIGHTS_DIR.iterdir())
    assert size < 25 * 1024 * 1024


def test_it_analyses_real_scans_of_any_size(analyzer):
    images = [decode_image(SCANS_DIR / path) for path in SAMPLES]
    results = analyzer.analyze(images, batch_size=2)
    assert len(results) == 3
    for image, result in zip(images, results, strict=True):
        assert set(result.probabilities) == {"normal", "benign", "malignant"}
        assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        assert result.confidence == max(result.probabilities.values())
        assert result.label == max(result.probabilities, key=result.probabilities.get)
        assert result.lesion_mask.shape == (image.height, image.width)
        assert result.lesion_area_fraction == pytest.approx(result.lesion_mask.mean())
        for heatmap in (result.gradcam, result.seg_gradcam):
            assert heatmap.shape == (image.height, image.width)
            assert 0.0 <= heatmap.min() and heatmap.max() <= 1.0
        if result.bbox:
            x0, y0, x1, y1 = result.bbox
            assert result.lesion_mask[y0:y1, x0:x1].sum() == result.lesion_mask.sum()
        assert result.model_version == analyzer.model_version


def test_a_stored_model_input_gives_the_analysis_of_the_decoded_scan(analyzer):
    """The worker reads the model input stored at upload instead of decoding the scan:
    the analysis is the very one the decoded scan gives, mask at the scan's size."""
    images = [decode_image(SCANS_DIR / path) for path in SAMPLES]
    side = analyzer.image_size
    stored = [
        from_npy(
            to_npy(model_input(image.pixels, side)),
            side=side,
            height=image.height,
            width=image.width,
        )
        for image in images
    ]
    decoded = analyzer.analyze(images, batch_size=3)
    read = analyzer.analyze(stored, batch_size=3)
    for image, own, theirs in zip(images, decoded, read, strict=True):
        assert theirs.to_dict() == own.to_dict()
        assert theirs.lesion_mask.shape == (image.height, image.width)
        np.testing.assert_array_equal(theirs.lesion_mask, own.lesion_mask)
        np.testing.assert_array_equal(theirs.gradcam_map, own.gradcam_map)
        np.testing.assert_array_equal(theirs.seg_gradcam_map, own.seg_gradcam_map)
        assert theirs.stored_artifacts() == own.stored_artifacts()


def test_a_model_input_of_another_size_is_refused(analyzer):
    image = decode_image(SCANS_DIR / SAMPLES[0])
    other = model_input(image.pixels, analyzer.image_size // 2)
    with pytest.raises(ValueError, match="px model input"):
        analyzer.analyze([other])


def test_it_explains_a_class_the_caller_names(analyzer):
    image = decode_image(SCANS_DIR / SAMPLES[2])
    (as_benign,), (as_malignant,) = (
        analyzer.analyze([image], class_index=[1]),
        analyzer.analyze([image], class_index=[2]),
    )
    assert as_benign.probabilities == as_malignant.probabilities
    assert not np.allclose(as_benign.gradcam, as_malignant.gradcam)


def test_grad_cam_explains_the_calibrated_label_not_the_raw_argmax(analyzer):
    image = decode_image(SCANS_DIR / SAMPLES[1])
    (plain,) = analyzer.analyze([image])
    assert plain.explained_class == plain.label
    raw_winner = int(np.argmax(plain.class_logits))
    other = (raw_winner + 1) % len(CLASSES)
    # Class offsets large enough to move the winner, as calibration can.
    bias = np.zeros(len(CLASSES))
    bias[other] = 100.0
    meta = copy.copy(analyzer.meta)
    meta.class_bias = bias.tolist()
    (shifted,) = Analyzer(analyzer._model, meta).analyze([image])
    assert shifted.label == shifted.explained_class == CLASSES[other]
    (explicit,) = analyzer.analyze([image], class_index=[other])
    np.testing.assert_allclose(shifted.gradcam, explicit.gradcam, atol=1e-4)
    assert not np.allclose(shifted.gradcam, plain.gradcam, atol=1e-3)


def test_missing_or_corrupt_weights_fail_with_the_file_named(tmp_path):
    with pytest.raises(ModelLoadError, match="model.json"):
        Analyzer.load(tmp_path)
    shutil.copy(DEFAULT_WEIGHTS_DIR / "model.json", tmp_path / "model.json")
    (tmp_path / "weights.npz").write_bytes(
        (DEFAULT_WEIGHTS_DIR / "weights.npz").read_bytes()[:5000]
    )
    with pytest.raises(ModelLoadError, match="weights.npz"):
        Analyzer.load(tmp_path)


def _predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ml", "predict", *args],
        check=False,
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_predict_cli_writes_results_and_names_bad_files(tmp_path):
    from ml.site_calibration import SiteCalibration
    from ml.training.ood_corpus import corpus

    inputs = tmp_path / "in"
    inputs.mkdir()
    names = {}  # stem -> file name
    for path in SAMPLES[1:]:
        source = SCANS_DIR / path
        shutil.copy(source, inputs / source.name)
        names[source.stem] = source.name
    (inputs / "notes.png").write_text("not an image")
    Image.fromarray(corpus()["document_1"]).save(inputs / "letter.png")
    site = SiteCalibration(
        temperature=1.5,
        offsets=(0.5, 0.0, 0.8),
        threshold=0.3,
        target_sensitivity=0.9,
        n=120,
    )
    calibration = tmp_path / "site.json"
    calibration.write_text(json.dumps(site.to_dict()))
    out = tmp_path / "out"
    # Batches of one: the marginal time is measured over the batches after the first.
    completed = _predict(
        str(inputs), "--out", str(out), "--batch-size", "1",
        "--calibration", str(calibration),
    )  # fmt: skip
    assert completed.returncode == 1, completed.stderr
    assert (
        "notes.png" in completed.stderr and "not a recognised image" in completed.stderr
    )
    assert "marginal time:" in completed.stderr and "ms per image" in completed.stderr
    for stem, name in names.items():
        result = json.loads((out / f"{stem}.json").read_text())
        assert set(result) == {
            "label",
            "probabilities",
            "confidence",
            "lesion_area_fraction",
            "bbox",
            "model_version",
            "explained_class",
            "in_distribution",
            "ood_score",
            "logits",
            "withheld",
            "gate_score",
            "looked_again",
            "calibration",
            "calibrated_probabilities",
            "calibrated_label",
            "suspicious",
        }
        assert result["explained_class"] == result["label"]
        assert result["withheld"] is False and isinstance(result["gate_score"], float)
        assert result["calibration"] == site.calibration_id
        calibrated = site.probabilities(np.array([result["logits"]]))
        assert result["suspicious"] == bool(site.suspicious(calibrated)[0])
        label = CLASSES[int(site.labels(np.array([result["logits"]]))[0])]
        assert result["calibrated_label"] == label
        np.testing.assert_allclose(
            [result["calibrated_probabilities"][c] for c in CLASSES],
            calibrated[0],
            rtol=1e-6,
        )
        with (
            Image.open(inputs / name) as original,
            Image.open(out / f"{stem}_mask.png") as mask,
        ):
            assert mask.size == original.size
            assert mask.mode == "1"  # what a worker stores
        for suffix in ("gradcam_map", "seg_gradcam_map"):
            with Image.open(out / f"{stem}_{suffix}.png") as heatmap:
                assert heatmap.mode == "L" and max(heatmap.size) <= 64
        # Raw outputs only by default: no drawn composites.
        for suffix in ("overlay", "gradcam", "seg_gradcam"):
            assert not (out / f"{stem}_{suffix}.png").exists()
    assert not (out / "notes.json").exists()
    # A document is withheld: its JSON says so, and no outline or heatmap is drawn.
    letter = json.loads((out / "letter.json").read_text())
    assert letter["withheld"] is True and isinstance(letter["gate_score"], float)
    assert not list(out.glob("letter_*.png"))
    assert "letter.png: withheld" in completed.stdout


def test_a_bad_calibration_file_is_refused_before_the_model_loads(tmp_path):
    calibration = tmp_path / "site.json"
    calibration.write_text(json.dumps({"temperature": -1}))
    completed = _predict(
        str(tmp_path), "--out", str(tmp_path / "o"), "--calibration", str(calibration)
    )
    assert completed.returncode == 2
    assert "site.json" in completed.stderr and "lacks" in completed.stderr


def test_predict_cli_draws_the_overlays_only_when_asked(tmp_path):
    image = tmp_path / "scan.png"
    shutil.copy(SCANS_DIR / SAMPLES[-1], image)
    out = tmp_path / "out"
    completed = _predict(str(image), "--out", str(out), "--overlays")
    assert completed.returncode == 0, completed.stderr
    with Image.open(image) as original:
        for suffix in ("overlay", "gradcam", "seg_gradcam"):
            with Image.open(out / f"scan_{suffix}.png") as picture:
                assert picture.size == original.size and picture.mode == "RGB"
    assert (out / "scan.json").is_file() and (out / "scan_mask.png").is_file()


def test_what_a_worker_stores_reads_back_as_the_model_produced_it(analyzer):
    from ml.render import read_heatmap, read_mask

    images = [decode_image(SCANS_DIR / path) for path in SAMPLES]
    for image, result in zip(images, analyzer.analyze(images), strict=True):
        stored = result.stored_artifacts()
        assert (read_mask(stored["mask"]) == result.lesion_mask).all()
        for kind, full in (
            ("gradcam_map", result.gradcam),
            ("seg_gradcam_map", result.seg_gradcam),
        ):
            back = read_heatmap(stored[kind], image.width, image.height)
            # 64 px maps drawn back over the scan: off by about one grey level on average.
            assert np.abs(back - full).mean() < 2 / 255, kind
            assert np.abs(back - full).max() < 0.1, kind
            assert len(stored[kind]) < 8 * 1024


def test_weights_without_a_gate_or_caution_threshold_still_analyse(analyzer):
    """model.json written before issue 16 has neither: nothing is withheld, gate_score is
    None, and the caution keeps the archive's own threshold."""
    meta = copy.copy(analyzer.meta)
    meta.gate, meta.caution_threshold = None, None
    meta.ood = copy.deepcopy(analyzer.meta.ood)
    archive_threshold = meta.ood.threshold
    old = Analyzer(analyzer._model, meta)
    assert old.gate is None
    [result] = old.analyze([decode_image(SCANS_DIR / SAMPLES[0])])
    assert result.withheld is False and result.gate_score is None
    assert result.to_dict()["gate_score"] is None
    assert old.ood.threshold == archive_threshold
    # A caution threshold in model.json replaces the archive's.
    meta = copy.copy(meta)
    meta.ood = copy.deepcopy(analyzer.meta.ood)
    meta.caution_threshold = result.ood_score - 1e-3
    [again] = Analyzer(analyzer._model, meta).analyze(
        [decode_image(SCANS_DIR / SAMPLES[0])]
    )
    assert again.in_distribution is False


def test_stored_logits_re_score_to_what_the_analysis_showed(analyzer):
    """A site calibration re-scores history from the stored logits: with the weights' own
    calibration the logits give back exactly the probabilities the analysis showed."""
    from ml.site_calibration import SiteCalibration

    results = analyzer.analyze([decode_image(SCANS_DIR / path) for path in SAMPLES])
    own = SiteCalibration.from_training(
        temperature=analyzer.temperature, class_bias=analyzer.class_bias
    )
    stored = np.array([r.to_dict()["logits"] for r in results])
    rescored = own.probabilities(stored)
    shown = np.array([[r.probabilities[c] for c in CLASSES] for r in results])
    np.testing.assert_allclose(rescored, shown, atol=1e-6)


@pytest.fixture(scope="module")
def second_look(analyzer) -> Analyzer:
    meta = copy.copy(analyzer.meta)
    meta.second_look = {"margin": 0.25}
    return Analyzer(analyzer._model, meta)


@pytest.fixture(scope="module")
def one_pass(analyzer) -> Analyzer:
    meta = copy.copy(analyzer.meta)
    meta.second_look = None
    return Analyzer(analyzer._model, meta)


def test_the_committed_weights_look_once():
    """The second look was measured and not adopted (ml/reports/second_look/, the card):
    the committed model.json keeps it off."""
    meta = json.loads((DEFAULT_WEIGHTS_DIR / "model.json").read_text())
    assert meta["second_look"] is None


def test_the_second_look_averages_both_passes_and_keeps_the_whole_scans_outline(
    one_pass, second_look
):
    """The same network on the crop around the lesion it found, made by hand from the model
    input as ml.training.second_look measured it: the logits are the two passes' mean; the
    outline, box and area are the whole scan's."""
    from ml.decode import to_rgb
    from ml.zoom import crop_extent, square_crop

    image = decode_image(SCANS_DIR / SAMPLES[2])
    (once,) = one_pass.analyze([image])
    (twice,) = second_look.analyze([image])
    assert once.bbox is not None and not once.looked_again
    assert twice.looked_again and twice.to_dict()["looked_again"] is True

    squeezed = model_input(to_rgb(image.pixels), one_pass.image_size).pixels
    stretched = np.asarray(
        Image.fromarray(squeezed).resize((image.width, image.height), Image.BILINEAR)
    )
    extent = crop_extent(once.bbox, 0.25)
    (crop,) = one_pass.analyze([square_crop(stretched, once.bbox, 0.25, extent)])
    np.testing.assert_allclose(
        twice.class_logits, (once.class_logits + crop.class_logits) / 2, atol=1e-4
    )
    np.testing.assert_array_equal(twice.lesion_mask, once.lesion_mask)
    assert (twice.bbox, twice.lesion_area_fraction) == (
        once.bbox,
        once.lesion_area_fraction,
    )
    np.testing.assert_array_equal(twice.seg_gradcam_map, once.seg_gradcam_map)
    assert twice.label == twice.explained_class


def test_the_second_look_leaves_scans_without_a_lesion_and_withheld_ones_alone(
    analyzer, second_look
):
    blank = np.zeros(
        (300, 400, 3), np.uint8
    )  # nothing to find, and withheld by the gate
    (once,) = analyzer.analyze([blank])
    (twice,) = second_look.analyze([blank])
    assert not twice.looked_again
    assert twice.to_dict() == {**once.to_dict(), "looked_again": False}


def test_with_the_second_look_a_stored_model_input_still_gives_the_decoded_analysis(
    second_look,
):
    images = [decode_image(SCANS_DIR / path) for path in SAMPLES]
    side = second_look.image_size
    stored = [model_input(image.pixels, side) for image in images]
    for own, theirs in zip(
        second_look.analyze(images), second_look.analyze(stored), strict=True
    ):
        assert theirs.to_dict() == own.to_dict()
        np.testing.assert_array_equal(theirs.lesion_mask, own.lesion_mask)
        np.testing.assert_array_equal(theirs.gradcam_map, own.gradcam_map)

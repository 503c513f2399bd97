"""The ultrasound gate (ml.gate): real fixture scans pass, the non-ultrasound corpus, colour
overlays and real Doppler frames are withheld; old weights without a gate still load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml.config import DEFAULT_WEIGHTS_DIR, REPO_DIR
from ml.gate import FEATURES, GateModel, OneClass, gate_features
from ml.training.gate import augment_site, network_square, reframe
from ml.training.ood_corpus import (
    doppler_box_overlay,
    doppler_overlay,
    elastography_overlay,
    gate_corpus,
)

FIXTURE_SCANS = sorted((REPO_DIR / "tests" / "fixtures" / "scans").glob("*/*.*"))


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def gate() -> GateModel:
    payload = json.loads((DEFAULT_WEIGHTS_DIR / "model.json").read_text())
    gate = GateModel.from_dict(payload.get("gate"))
    assert gate is not None, "the committed model.json carries no gate"
    return gate


def test_features_are_finite_for_every_kind_of_image():
    images = [pixels for _, pixels in gate_corpus(seed=3, per_kind=1)]
    images += [np.zeros((256, 256, 3), np.uint8), np.full((7, 5, 3), 255, np.uint8)]
    images += [np.zeros((40, 30), np.uint8)]  # grey without channels
    for pixels in images:
        features = gate_features(pixels)
        assert features.shape == (len(FEATURES),)
        assert np.isfinite(features).all()


def test_colour_map_pixels_are_counted_at_full_size():
    scan = network_square(_rgb(FIXTURE_SCANS[0]))
    painted = doppler_overlay(scan, np.random.default_rng(0))
    names = list(FEATURES)
    before, after = gate_features(scan), gate_features(painted)
    red, blue = (
        names.index("log_doppler_red_fraction"),
        names.index("log_doppler_blue_fraction"),
    )
    assert after[red] > before[red] or after[blue] > before[blue]


def test_one_doppler_flow_pixel_withholds_and_scanner_marks_do_not(gate):
    assert gate.doppler_limit is not None
    for path in FIXTURE_SCANS[:3]:
        scan = network_square(_rgb(path))
        # Another scanner's tint, gamma, contrast and yellow/green/cyan marks: no flow.
        for seed in range(5):
            marked = augment_site(scan, np.random.default_rng(seed))
            assert gate.margins(gate_features(marked))["doppler_pixels"][0] <= 0
        for colour in ((220, 30, 20), (30, 60, 230)):
            flow = scan.copy()
            flow[100, 140] = colour
            assert gate.margins(gate_features(flow))["doppler_pixels"][0] > 0
            assert gate.withheld(gate.score(gate_features(flow)))[0]


def test_a_thin_box_makes_right_angled_corners():
    names = list(FEATURES)
    corners = names.index("box_corners")
    rng = np.random.default_rng(2)
    gains = []
    for path in FIXTURE_SCANS:
        scan = network_square(_rgb(path))
        boxed = doppler_box_overlay(scan, rng)  # a grey box on bright tissue is faint
        gains.append(gate_features(boxed)[corners] - gate_features(scan)[corners])
    assert min(gains) > 0 and np.median(gains) > 0.1, gains


def test_the_speckle_term_withholds_smooth_kinds_it_never_saw(gate):
    """The one-class term is fitted on scans alone: X-ray-, CT- and MRI-like slices and
    low-pass noise are withheld by it, the fixture scans are not."""
    assert gate.one_class is not None
    unseen = [
        network_square(p)
        for kind, p in gate_corpus(seed=11, per_kind=2)
        if kind in ("chest_xray_like", "ct_like", "mri_like", "cloud_noise")
    ]
    assert len(unseen) == 8
    margins = gate.margins(np.stack([gate_features(p) for p in unseen]))
    assert (margins["one_class"] > 0).all(), margins["one_class"]
    scans = np.stack([gate_features(network_square(_rgb(p))) for p in FIXTURE_SCANS])
    assert (gate.margins(scans)["one_class"] <= 0).all()


def test_real_fixture_scans_pass_the_gate(gate):
    scores = gate.score(
        np.stack([gate_features(network_square(_rgb(p))) for p in FIXTURE_SCANS])
    )
    assert not gate.withheld(scores).any(), dict(
        zip(FIXTURE_SCANS, scores, strict=True)
    )


# The kinds the issue names first: photos, documents, screenshots, blank and noise frames,
# colour frames; and test patterns, charts, ECG strips and codes.
NAMED_KINDS = (
    "blank", "noise", "test_pattern", "document", "screenshot", "chart", "ecg", "barcode",
    "doppler_like", "elastography_like", "colour_photo", "scanned_text",
)  # fmt: skip


@pytest.fixture(scope="module")
def unseen_corpus(gate):
    corpus = gate_corpus(seed=11, per_kind=2)  # draws the gate was not fitted on
    scores = gate.score(np.stack([gate_features(network_square(p)) for _, p in corpus]))
    return [kind for kind, _ in corpus], gate.withheld(scores)


def test_photos_documents_screens_blank_noise_and_colour_frames_are_withheld(
    gate, unseen_corpus
):
    kinds, withheld = unseen_corpus
    missed = [
        k for k, w in zip(kinds, withheld, strict=True) if k in NAMED_KINDS and not w
    ]
    assert not missed
    rng = np.random.default_rng(5)
    scan = _rgb(FIXTURE_SCANS[1])
    for paint in (doppler_overlay, elastography_overlay):
        painted = network_square(paint(scan, rng))
        assert gate.withheld(gate.score(gate_features(painted)))[0], paint.__name__


def test_the_whole_corpus_reaches_the_issue_target(unseen_corpus):
    # Fresh draws of every kind, the shipped gate; the kind-held-out LOSO figure (the
    # issue's measure) is in the model card.
    _, withheld = unseen_corpus
    assert withheld.mean() >= 0.95


def _real_doppler_withheld(gate) -> float:
    from ml.training.sources import SOURCES, load_image, read_manifest

    root = SOURCES["bus-uclm"].root()
    if not (root / "MANIFEST.csv").is_file():
        pytest.skip("BUS-UCLM not found")
    frames = [
        r
        for r in read_manifest("bus-uclm", root)
        if r.excluded == "colour Doppler overlay"
    ]
    assert len(frames) == 37
    scores = gate.score(
        np.stack([gate_features(network_square(load_image(root, r))) for r in frames])
    )
    return float(gate.withheld(scores).mean())


def test_reframing_changes_the_frame_the_way_the_network_augmentation_does():
    """Another scanner's frame: the network's square, at times zoomed out onto a black
    border, otherwise a crop whose aspect ratio differs from the scan's."""
    scan = _rgb(FIXTURE_SCANS[0])
    plain = network_square(scan)
    framed = [reframe(scan, np.random.default_rng(seed)) for seed in range(40)]
    assert all(f.shape == plain.shape and f.dtype == np.uint8 for f in framed)
    borders = [f for f in framed if (f.max(axis=2) == 0).all(axis=0).any()]
    assert 1 <= len(borders) <= 15  # zoomed out 15% of the time
    assert all(not np.array_equal(f, plain) for f in framed)
    anisotropy = FEATURES.index("residual_anisotropy")
    spread = np.ptp([gate_features(f)[anisotropy] for f in framed])
    assert spread > 0.1  # the texture's lateral elongation moves with the frame


def test_doppler_frames_the_manifests_miss_are_not_counted_as_scans(gate):
    from ml.training.gate import UNMARKED_DOPPLER, _with_bmode
    from ml.training.sources import SOURCES, load_image, read_manifest

    root = SOURCES["bus-uclm"].root()
    if not (root / "MANIFEST.csv").is_file():
        pytest.skip("BUS-UCLM not found")
    records = {r.path: r for r in read_manifest("bus-uclm", root)}
    frames = sorted(UNMARKED_DOPPLER["bus-uclm"])
    assert all(records[p].excluded is None for p in frames)  # the manifest says B-mode
    paths = np.array([frames[0], "images/ANFO_005.jpg"])
    assert _with_bmode("bus-uclm", {"paths": paths})["bmode"].tolist() == [False, True]
    features = np.stack(
        [gate_features(network_square(load_image(root, records[p]))) for p in frames]
    )
    # Flow pixels inside the frame: what the manifest's own Doppler frames show.
    assert (gate.margins(features)["doppler_pixels"] > 0).all()


def test_real_doppler_frames_are_mostly_withheld(gate):
    # The Mahalanobis flag it replaces withheld 3 of these 37 frames (0.081).
    assert _real_doppler_withheld(gate) > 0.5


def test_real_doppler_frames_reach_the_issue_target(gate):
    assert _real_doppler_withheld(gate) >= 0.9


def test_parameters_round_trip_and_unknown_features_mean_no_gate(gate):
    assert GateModel.from_dict(json.loads(json.dumps(gate.to_dict()))) == gate
    assert GateModel.from_dict(None) is None
    assert GateModel.from_dict({**gate.to_dict(), "features": ["other"]}) is None
    with pytest.raises(ValueError, match="values each"):
        GateModel.from_dict({**gate.to_dict(), "coef": [1.0]})
    one_class = gate.to_dict()["one_class"]
    with pytest.raises(ValueError, match="differ in length"):
        OneClass.from_dict({**one_class, "direction": [1.0]})
    with pytest.raises(ValueError, match="unknown"):
        OneClass.from_dict(
            {**one_class, "features": ["other"] * len(one_class["mean"])}
        )


def test_the_squares_withhold_images_far_from_scans_on_either_side():
    """A held-out kind that is too smooth where the fitted negatives were too rough: the
    linear model lets it through; the squares with background negatives do not."""
    from ml.training.gate import fit_gate

    rng = np.random.default_rng(0)
    scans = rng.normal(0.0, 1.0, (400, len(FEATURES)))
    rough = rng.normal(0.0, 1.0, (200, len(FEATURES)))
    rough[:, 0] += 6.0
    smooth = rng.normal(0.0, 1.0, (50, len(FEATURES)))
    smooth[:, 0] -= 6.0
    for quadratic, expected in ((False, False), (True, True)):
        gate = fit_gate(
            scans, rough, keep=0.99, quadratic=quadratic, background=quadratic
        )
        assert gate.withheld(gate.score(rough)).mean() > 0.95
        assert bool(gate.withheld(gate.score(smooth)).mean() > 0.95) is expected
        assert gate.withheld(gate.score(scans)).mean() <= 0.011

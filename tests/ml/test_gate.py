"""The ultrasound gate (ml.gate): real fixture scans pass, the non-ultrasound corpus, colour
overlays and real Doppler frames are withheld; old weights without a gate still load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml.config import DEFAULT_WEIGHTS_DIR, REPO_DIR
from ml.gate import FEATURES, GateModel, gate_features
from ml.training.gate import network_square
from ml.training.ood_corpus import doppler_overlay, elastography_overlay, gate_corpus

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


@pytest.mark.xfail(
    strict=True,
    reason="issue 16 target (>= 0.95 of the corpus) missed: synthetic X-ray / CT slices and "
    "some grey photographs pass (see the model card); strict, so reaching it shows",
)
def test_the_whole_corpus_reaches_the_issue_target(unseen_corpus):
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


def test_real_doppler_frames_are_mostly_withheld(gate):
    # The Mahalanobis flag it replaces withheld 3 of these 37 frames (0.081).
    assert _real_doppler_withheld(gate) > 0.5


@pytest.mark.xfail(
    strict=True,
    reason="issue 16 target (>= 0.90 of BUS-UCLM's Doppler frames) missed: frames with a "
    "Doppler box and little or no flow pass (see the model card)",
)
def test_real_doppler_frames_reach_the_issue_target(gate):
    assert _real_doppler_withheld(gate) >= 0.9


def test_parameters_round_trip_and_unknown_features_mean_no_gate(gate):
    assert GateModel.from_dict(json.loads(json.dumps(gate.to_dict()))) == gate
    assert GateModel.from_dict(None) is None
    assert GateModel.from_dict({**gate.to_dict(), "features": ["other"]}) is None
    with pytest.raises(ValueError, match="values each"):
        GateModel.from_dict({**gate.to_dict(), "coef": [1.0]})


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

"""``python -m ml fit-gate``: fit and judge the ultrasound gate (``ml.gate``).

Positives are the used scans of the training sources (each also once more with a random
tint, gamma and contrast: scanners differ in their display map; BUS-UCLM's B-mode is
colour-tinted), negatives the non-ultrasound corpus (``ml.training.ood_corpus.gate_corpus``)
plus colour-Doppler and elastography overlays painted on training scans. BUS-UCLM's 37 real
colour-Doppler frames are never fitted on: they are a test.

Judged leave-one-source-out and held out by kind: in the fold without source S, the gate is
fitted on the two other sources; every corpus kind is withheld-tested by a gate fitted
without that kind (the overlays count as the Doppler / elastography kinds). The threshold is
the ``keep`` quantile of the fitted positives' scores, chosen before any test data is seen.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from ml.config import IMAGE_SIZE, REPO_DIR
from ml.gate import FEATURES, GateModel, gate_features
from ml.training.ood_corpus import doppler_overlay, elastography_overlay, gate_corpus
from ml.training.sources import SOURCES, load_image, read_manifest
from ml.training.splits import SPLITS, load_split

logger = logging.getLogger(__name__)

CACHE_DIR = REPO_DIR / "var" / "gate"
KEEP = 0.998
OVERLAY_KINDS = {"doppler": "doppler_like", "elastography": "elastography_like"}
FEATURE_SETS = {
    "colour only": [
        f for f in FEATURES if "colour" in f or "doppler" in f or f == "mean_chroma"
    ],
    "all": list(FEATURES),
}


def network_square(pixels: np.ndarray) -> np.ndarray:
    """The image as the Analyzer sees it: squeezed to the network's square, bilinear."""
    return np.asarray(
        Image.fromarray(pixels).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
    )


def augment_site(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Another scanner's display: a channel tint, a gamma and a contrast change."""
    values = pixels.astype(np.float64) / 255.0
    gains = 1.0 + rng.uniform(-0.08, 0.08, 3)
    values = values ** rng.uniform(0.7, 1.4) * rng.uniform(0.8, 1.2) * gains
    return np.clip(values * 255, 0, 255).astype(np.uint8)


def source_features(source: str) -> dict[str, np.ndarray]:
    """Features of a source's used scans, of a site-augmented copy of each, of a Doppler and
    an elastography overlay on each, and of its real Doppler frames (cached)."""
    cache = CACHE_DIR / f"{source}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    root = SOURCES[source].root()
    split = load_split(source)
    used = {path for part in SPLITS for path in split[part]}
    rows: dict[str, list] = {
        k: [] for k in ("scan", "augmented", "doppler", "elastography", "real_doppler")
    }
    paths = []
    for i, record in enumerate(read_manifest(source, root)):
        rng = np.random.default_rng([i, len(source)])
        if record.excluded == "colour Doppler overlay":
            rows["real_doppler"].append(
                gate_features(network_square(load_image(root, record)))
            )
            continue
        if record.path not in used:
            continue
        # Augmented and painted at the network's size: the same features, a quarter
        # of the time.
        pixels = network_square(load_image(root, record))
        paths.append(record.path)
        rows["scan"].append(gate_features(pixels))
        rows["augmented"].append(gate_features(augment_site(pixels, rng)))
        rows["doppler"].append(gate_features(doppler_overlay(pixels, rng)))
        rows["elastography"].append(gate_features(elastography_overlay(pixels, rng)))
    out = {
        k: np.asarray(v, np.float64).reshape(-1, len(FEATURES)) for k, v in rows.items()
    }
    out["paths"] = np.asarray(paths)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def corpus_features(seed: int = 0, per_kind: int = 8) -> tuple[np.ndarray, np.ndarray]:
    kinds, features = [], []
    for kind, pixels in gate_corpus(seed, per_kind):
        kinds.append(kind)
        features.append(gate_features(network_square(pixels)))
    return np.asarray(kinds), np.asarray(features)


def fit_gate(
    positives: np.ndarray,
    negatives: np.ndarray,
    *,
    threshold_on: np.ndarray | None = None,
    keep: float = KEEP,
    columns: list[str] | None = None,
) -> GateModel:
    """Logistic regression (balanced classes) on standardised features; the threshold keeps
    ``keep`` of ``threshold_on`` (default: the positives) in."""
    from sklearn.linear_model import LogisticRegression

    columns = columns or list(FEATURES)
    mask = np.array([f in columns for f in FEATURES])
    x = np.concatenate([positives, negatives])
    y = np.concatenate([np.zeros(len(positives)), np.ones(len(negatives))])
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mean) / scale
    model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000)
    model.fit(z[:, mask], y)
    coef = np.zeros(len(FEATURES))
    coef[mask] = model.coef_[0]
    gate = GateModel(
        mean=tuple(mean.tolist()),
        scale=tuple(scale.tolist()),
        coef=tuple(coef.tolist()),
        intercept=float(model.intercept_[0]),
        threshold=0.0,
    )
    reference = positives if threshold_on is None else threshold_on
    threshold = float(np.quantile(gate.score(reference), keep))
    return GateModel(
        gate.mean, gate.scale, gate.coef, gate.intercept, max(threshold, -50.0)
    )


def _training_sets(
    sources: list[str],
    features: dict[str, dict[str, np.ndarray]],
    corpus_kinds: np.ndarray,
    corpus: np.ndarray,
    *,
    without_kind: str | None,
    augment: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scans = np.concatenate([features[s]["scan"] for s in sources])
    positives = [scans]
    if augment:
        positives += [features[s]["augmented"] for s in sources]
    negatives = [corpus[corpus_kinds != without_kind]]
    for overlay, kind in OVERLAY_KINDS.items():
        if kind != without_kind:
            negatives += [features[s][overlay] for s in sources]
    return np.concatenate(positives), np.concatenate(negatives), scans


def evaluate_gate(
    *, keep: float = KEEP, augment: bool = True, columns: list[str] | None = None
) -> dict:
    """Leave-one-source-out, each corpus kind held out in turn."""
    features = {s: source_features(s) for s in SOURCES}
    kinds, corpus = corpus_features()
    real_doppler = np.concatenate([features[s]["real_doppler"] for s in SOURCES])
    folds = {}
    for held_out in SOURCES:
        training = [s for s in SOURCES if s != held_out]
        positives, negatives, scans = _training_sets(
            training, features, kinds, corpus, without_kind=None, augment=augment
        )
        gate = fit_gate(
            positives, negatives, threshold_on=scans, keep=keep, columns=columns
        )
        test_scans = features[held_out]["scan"]
        per_kind = {}
        for kind in sorted(set(kinds.tolist())):
            positives, negatives, scans = _training_sets(
                training, features, kinds, corpus, without_kind=kind, augment=augment
            )
            kind_gate = fit_gate(
                positives, negatives, threshold_on=scans, keep=keep, columns=columns
            )
            per_kind[kind] = float(
                kind_gate.withheld(kind_gate.score(corpus[kinds == kind])).mean()
            )
        folds[held_out] = {
            "held_out_scans": len(test_scans),
            "held_out_scans_passing": float(
                1 - gate.withheld(gate.score(test_scans)).mean()
            ),
            "doppler_frames": len(real_doppler),
            "doppler_withheld": float(gate.withheld(gate.score(real_doppler)).mean()),
            "corpus_images": len(kinds),
            "corpus_withheld_kind_held_out": float(
                np.mean([per_kind[k] for k in kinds.tolist()])
            ),
            "corpus_withheld_per_kind": per_kind,
            "threshold": gate.threshold,
        }
    return {
        "keep": keep,
        "augment": augment,
        "features": columns or list(FEATURES),
        "corpus_kinds": len(set(kinds.tolist())),
        "folds": folds,
    }


def fit_production_gate(*, keep: float = KEEP) -> GateModel:
    """The shipped gate: every source and every kind."""
    features = {s: source_features(s) for s in SOURCES}
    kinds, corpus = corpus_features()
    positives, negatives, scans = _training_sets(
        list(SOURCES), features, kinds, corpus, without_kind=None, augment=True
    )
    return fit_gate(positives, negatives, threshold_on=scans, keep=keep)


def write_gate(weights_dir: Path, gate: GateModel) -> None:
    """Store the gate in ``model.json`` (not in the archive: the model version, the
    archive's hash, stays the one every stored analysis names)."""
    meta_path = Path(weights_dir) / "model.json"
    payload = json.loads(meta_path.read_text())
    payload["gate"] = gate.to_dict()
    meta_path.write_text(json.dumps(payload, indent=2) + "\n")


DESCRIPTION = (
    "A logistic model over 18 colour, intensity and texture statistics of the image at the "
    "network's input size (`ml/gate.py`: colour-map pixels counted at full size, so a "
    "Doppler flow spot of a few pixels registers; grey histogram, flat and black/white "
    "fractions, lag-1/lag-4 autocorrelation, Laplacian energy, grey levels, skewness, "
    "kurtosis), fitted on real scans (each also with a random tint, gamma and contrast) "
    "against the non-ultrasound corpus (`ml/training/ood_corpus.py` `gate_corpus`) and "
    "Doppler / elastography overlays painted on training scans. It does not look through "
    "the task network, so its LOSO needs no fold trainings; threshold: the 99.8th "
    "percentile of the fitted scans' scores."
)


def gate_report(weights_dir: Path, *, ood_before: dict | None = None) -> dict:
    """Variants (ablation, the chosen one last) judged by LOSO; the chosen one fitted on
    everything and written to ``weights_dir/model.json``."""
    features = {s: source_features(s) for s in SOURCES}
    kinds, _ = corpus_features()
    variants = []
    if ood_before is not None:
        variants.append(ood_before)
    for name, kwargs in (
        ("colour statistics only", {"columns": FEATURE_SETS["colour only"]}),
        ("all statistics, no site augmentation", {"augment": False}),
        ("all statistics + site augmentation (shipped)", {}),
    ):
        logger.info("gate variant: %s", name)
        variants.append({"name": name, **evaluate_gate(**kwargs)})
    gate = fit_production_gate()
    scans = np.concatenate([features[s]["scan"] for s in SOURCES])
    write_gate(weights_dir, gate)
    return {
        "description": DESCRIPTION,
        "corpus_images": len(kinds),
        "corpus_kinds": len(set(kinds.tolist())),
        "doppler_frames": int(sum(len(features[s]["real_doppler"]) for s in SOURCES)),
        "variants": variants,
        "production": {
            "gate_id": gate.gate_id,
            "threshold": gate.threshold,
            "training_scans_withheld": float(gate.withheld(gate.score(scans)).mean()),
        },
    }

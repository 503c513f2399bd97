"""Saving and loading BUSNet weights: a float16 numpy archive plus ``model.json``.

The version string is the model name plus the first 12 hex digits of the archive's sha256,
so a result can always be traced to the exact bytes that produced it. The calibration
(temperature and per-class logit bias) is stored inside the archive, so it is covered by
the version too; ``model.json`` repeats it for people to read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from ml.config import (
    BACKBONE,
    BACKBONE_NAMES,
    CLASS_HEADS,
    CLASSES,
    IMAGE_SIZE,
    MODEL_NAME,
)

WEIGHTS_FILE = "weights.npz"
META_FILE = "model.json"
TEMPERATURE_KEY = "calibration/temperature"
CLASS_BIAS_KEY = "calibration/class_bias"


class ModelLoadError(RuntimeError):
    """The weights are missing, unreadable or do not fit the network."""


@dataclass
class ModelMeta:
    name: str
    version: str
    image_size: int
    classes: list[str]
    # ml.config.CLASS_HEADS; weights saved before the option existed are "global"
    class_head: str = "global"
    # ml.backbone.BACKBONES; weights saved before the option existed are Lite0's
    backbone: str = BACKBONE
    temperature: float = 1.0
    ood_threshold: float | None = None
    class_bias: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    seg_threshold: float = 0.5
    weights_sha256: str = ""
    training: dict = field(default_factory=dict)
    # The ultrasound gate (ml.gate.GateModel.to_dict()) and the caution's threshold on the
    # out-of-distribution score when it was re-set after training (issue 16). Both live in
    # model.json only; weights saved before them have neither (see ml.inference.Analyzer).
    gate: dict | None = None
    caution_threshold: float | None = None
    # The second look (ml.inference.Analyzer): {"margin": m}, or None for one pass only.
    second_look: dict | None = None
    # Filled by load_into from the archive; not part of model.json.
    ood: object = field(default=None, repr=False, compare=False)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save(model, out_dir: Path, meta: ModelMeta, ood=None) -> ModelMeta:
    """Write the archive (float16 weights, calibration, out-of-distribution statistics) and model.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    arrays = {
        variable.path: np.asarray(variable.numpy(), dtype=np.float16)
        for variable in model.weights
    }
    weights_path = out_dir / WEIGHTS_FILE
    arrays[TEMPERATURE_KEY] = np.asarray(meta.temperature, np.float64)
    arrays[CLASS_BIAS_KEY] = np.asarray(meta.class_bias, np.float64)
    if ood is not None:
        arrays.update(ood.to_arrays())
        meta.ood_threshold = ood.threshold
    np.savez_compressed(weights_path, **arrays)
    meta.weights_sha256 = sha256_of(weights_path)
    meta.version = f"{meta.name}-{meta.weights_sha256[:12]}"
    write_meta(out_dir, meta)
    return meta


def placeholder_meta(version: str, **values: object) -> ModelMeta:
    """The description of a model that has no weights, for benchmarks and tests that
    need a model.json but never load a network."""
    return ModelMeta(
        name=MODEL_NAME,
        version=version,
        image_size=IMAGE_SIZE,
        classes=list(CLASSES),
        **values,  # type: ignore[arg-type]
    )


def write_meta(out_dir: Path, meta: ModelMeta) -> Path:
    """Write ``model.json`` for ``meta`` (what read_meta reads back); its path."""
    payload = {f.name: getattr(meta, f.name) for f in fields(meta) if f.name != "ood"}
    path = Path(out_dir) / META_FILE
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def read_meta(weights_dir: Path) -> ModelMeta:
    meta_path = Path(weights_dir) / META_FILE
    try:
        payload = json.loads(meta_path.read_text())
        payload.pop("ood", None)
        meta = ModelMeta(**payload)
    except FileNotFoundError as exc:
        raise ModelLoadError(f"model description not found: {meta_path}") from exc
    except OSError as exc:
        raise ModelLoadError(
            f"model description {meta_path} could not be read: {exc}"
        ) from exc
    except (ValueError, TypeError, AttributeError) as exc:  # not JSON, not an object
        raise ModelLoadError(
            f"model description {meta_path} is corrupt: {exc}"
        ) from exc
    if meta.backbone not in BACKBONE_NAMES:
        raise ModelLoadError(
            f"model description {meta_path} names backbone {meta.backbone!r}; "
            f"this code builds {list(BACKBONE_NAMES)}"
        )
    if meta.class_head not in CLASS_HEADS:
        raise ModelLoadError(
            f"model description {meta_path} names class head {meta.class_head!r}; "
            f"this code builds {list(CLASS_HEADS)}"
        )
    return meta


def load_into(model, weights_dir: Path, *, verify_checksum: bool = True) -> ModelMeta:
    """Assign saved weights to ``model`` (built by the same code); raise ModelLoadError on any mismatch.

    The archive's out-of-distribution statistics, if any, come back as ``meta.ood``.
    """
    from ml.ood import OodModel

    meta = read_meta(weights_dir)
    weights_path = Path(weights_dir) / WEIGHTS_FILE
    if not weights_path.is_file():
        raise ModelLoadError(f"weights file not found: {weights_path}")
    if (
        verify_checksum
        and meta.weights_sha256
        and sha256_of(weights_path) != meta.weights_sha256
    ):
        raise ModelLoadError(
            f"weights file {weights_path} does not match the sha256 in {META_FILE}"
        )
    try:
        with np.load(weights_path) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception as exc:  # zip and pickle errors vary; all mean an unreadable file
        raise ModelLoadError(
            f"weights file {weights_path} is unreadable: {exc}"
        ) from exc
    if TEMPERATURE_KEY in arrays:
        meta.temperature = float(arrays.pop(TEMPERATURE_KEY))
    if CLASS_BIAS_KEY in arrays:
        meta.class_bias = [float(v) for v in arrays.pop(CLASS_BIAS_KEY)]
    ood_keys = [key for key in arrays if key.startswith("ood/")]
    meta.ood = OodModel.from_arrays({key: arrays.pop(key) for key in ood_keys})
    expected = {variable.path for variable in model.weights}
    if set(arrays) != expected:
        missing = sorted(expected - set(arrays))[:3]
        extra = sorted(set(arrays) - expected)[:3]
        raise ModelLoadError(
            f"weights do not fit the network: missing {missing}, unexpected {extra}"
        )
    for variable in model.weights:
        value = arrays[variable.path]
        if tuple(value.shape) != tuple(variable.shape):
            raise ModelLoadError(
                f"{variable.path}: saved shape {value.shape}, network {tuple(variable.shape)}"
            )
        variable.assign(value.astype(np.float32))
    return meta

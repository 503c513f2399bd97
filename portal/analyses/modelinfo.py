"""Which model version new analyses are created for, read without TensorFlow.

The version the registry's activation log makes active, else the shipped model's
(ML_WEIGHTS_DIR). model.json is read by ml.weights_io, the one reader the worker's model
loader uses too; an installed version's folder is found by portal.registry.installed.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from ml.config import CLASSES
from ml.site_calibration import SiteCalibration
from ml.weights_io import META_FILE, ModelLoadError, ModelMeta, read_meta
from portal.registry.installed import version_meta
from portal.registry.selectors import model_version_promoted


class ModelVersionUnavailable(RuntimeError):
    """No usable model.json in the weights directory; str() says which file and why."""


def _metadata(weights_dir: str | Path | None) -> tuple[Path, ModelMeta]:
    directory = Path(weights_dir or settings.ML_WEIGHTS_DIR)
    path = directory / META_FILE
    try:
        return path, read_meta(directory)
    except ModelLoadError as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            raise ModelVersionUnavailable(
                f"no model is installed: {path} does not exist "
                "(set ML_WEIGHTS_DIR or train one)"
            ) from None
        raise ModelVersionUnavailable(str(exc)) from None


def current_model_version(weights_dir: str | Path | None = None) -> str:
    """The version new analyses are made by (with `weights_dir`: that folder's model)."""
    if weights_dir is None:
        promoted = model_version_promoted()
        if promoted:
            return promoted
    path, meta = _metadata(weights_dir)
    if not isinstance(meta.version, str) or not meta.version.strip():
        raise ModelVersionUnavailable(f'{path} has no "version" string')
    return meta.version.strip()


def _installed(model_version: str, weights_dir: str | Path | None) -> ModelMeta | None:
    """`model_version`'s description: from `weights_dir` if it holds that version, else
    from wherever it is installed (None: not on this machine)."""
    if weights_dir is None:
        try:
            return version_meta(model_version)
        except ModelLoadError as exc:
            raise ModelVersionUnavailable(str(exc)) from None
    _path, meta = _metadata(weights_dir)
    return meta if str(meta.version).strip() == model_version else None


def ood_threshold(
    *, model_version: str, weights_dir: str | Path | None = None
) -> float | None:
    """The out-of-distribution threshold of `model_version`.

    None when that version is not installed here (another's threshold does not apply)
    or it carries no out-of-distribution statistics.
    """
    meta = _installed(model_version, weights_dir)
    if meta is None:
        return None
    threshold = meta.ood_threshold
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        return None
    return float(threshold)


def model_calibration(
    *, model_version: str, weights_dir: str | Path | None = None
) -> SiteCalibration | None:
    """The calibration `model_version` was trained with (its temperature and class bias),
    as a SiteCalibration without a threshold; None when it is not installed here."""
    meta = _installed(model_version, weights_dir)
    if meta is None:
        return None
    try:
        return SiteCalibration.from_training(
            temperature=float(meta.temperature),
            class_bias=[float(v) for v in meta.class_bias],
        )
    except (TypeError, ValueError) as exc:
        raise ModelVersionUnavailable(
            f"model.json of {model_version} has no usable temperature and class_bias: {exc}"
        ) from None


def training_class_prior(
    *, model_version: str, weights_dir: str | Path | None = None
) -> list[float] | None:
    """The class frequencies (normal, benign, malignant) the model was trained on, from
    model.json ("training": {"class_prior"}); None when not recorded."""
    meta = _installed(model_version, weights_dir)
    if meta is None:
        return None
    prior = (meta.training or {}).get("class_prior")
    if isinstance(prior, dict):
        prior = [prior.get(name) for name in CLASSES]
    if (
        not isinstance(prior, list)
        or len(prior) != len(CLASSES)
        or not all(isinstance(v, int | float) and v > 0 for v in prior)
    ):
        return None
    total = float(sum(prior))
    return [float(v) / total for v in prior]


def model_input_side(*, model_version: str) -> int | None:
    """The side of the square `model_version` takes ("image_size"), for the model input
    stored with each upload (ml.model_input); None when that version is not installed
    here or its model.json says no usable size: the worker then decodes the original."""
    try:
        meta = _installed(model_version, None)
    except ModelVersionUnavailable:
        return None
    side = None if meta is None else meta.image_size
    if isinstance(side, bool) or not isinstance(side, int) or not 0 < side <= 4096:
        return None
    return side

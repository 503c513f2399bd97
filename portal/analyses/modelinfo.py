"""Which model version new analyses are created for, read without TensorFlow.

model.json is read by ml.weights_io, the one reader the worker's model loader uses too.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from ml.weights_io import META_FILE, ModelLoadError, ModelMeta, read_meta


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
    path, meta = _metadata(weights_dir)
    if not isinstance(meta.version, str) or not meta.version.strip():
        raise ModelVersionUnavailable(f'{path} has no "version" string')
    return meta.version.strip()


def ood_threshold(
    *, model_version: str, weights_dir: str | Path | None = None
) -> float | None:
    """The out-of-distribution threshold of `model_version` if it is the installed model.

    None when another model is installed (its threshold does not apply) or the installed
    one carries no out-of-distribution statistics.
    """
    _path, meta = _metadata(weights_dir)
    if str(meta.version).strip() != model_version:
        return None
    threshold = meta.ood_threshold
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        return None
    return float(threshold)

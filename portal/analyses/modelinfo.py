"""Which model version new analyses are created for, read without TensorFlow."""

from __future__ import annotations

import json
from pathlib import Path

from django.conf import settings


class ModelVersionUnavailable(RuntimeError):
    """No usable model.json in the weights directory; str() says which file and why."""


def _metadata(weights_dir: str | Path | None) -> tuple[Path, dict]:
    path = Path(weights_dir or settings.ML_WEIGHTS_DIR) / "model.json"
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelVersionUnavailable(
            f"no model is installed: {path} does not exist (set ML_WEIGHTS_DIR or train one)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ModelVersionUnavailable(
            f"{path} could not be read as JSON: {exc}"
        ) from None
    return path, metadata if isinstance(metadata, dict) else {}


def current_model_version(weights_dir: str | Path | None = None) -> str:
    path, metadata = _metadata(weights_dir)
    version = metadata.get("version")
    if not isinstance(version, str) or not version.strip():
        raise ModelVersionUnavailable(f'{path} has no "version" string')
    return version.strip()


def ood_threshold(
    *, model_version: str, weights_dir: str | Path | None = None
) -> float | None:
    """The out-of-distribution threshold of `model_version` if it is the installed model.

    None when another model is installed (its threshold does not apply) or the installed
    one carries no out-of-distribution statistics.
    """
    _path, metadata = _metadata(weights_dir)
    if str(metadata.get("version", "")).strip() != model_version:
        return None
    threshold = metadata.get("ood_threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        return None
    return float(threshold)

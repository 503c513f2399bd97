"""Which model version new analyses are created for, read without TensorFlow."""

from __future__ import annotations

import json
from pathlib import Path

from django.conf import settings


class ModelVersionUnavailable(RuntimeError):
    """No usable model.json in the weights directory; str() says which file and why."""


def current_model_version(weights_dir: str | Path | None = None) -> str:
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
    version = metadata.get("version") if isinstance(metadata, dict) else None
    if not isinstance(version, str) or not version.strip():
        raise ModelVersionUnavailable(f'{path} has no "version" string')
    return version.strip()

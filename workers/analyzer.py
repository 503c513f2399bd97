"""The Analyzers of this worker process: one per model version, loaded on first use and
kept, at most MAX_LOADED at once (the least recently used goes first).

An analysis names the version that makes it (the registry's active version when it was
created), so a promotion or rollback reaches new analyses with no restart, and an
analysis queued before it still gets the version it names. The active and a shadow
version fit together.

TensorFlow is imported here on first use only, never at import time, so the prefork
parent stays free of it and the portal never loads it.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from django.conf import settings

from portal.analyses.modelinfo import ModelVersionUnavailable, current_model_version
from portal.registry.installed import version_dir

if TYPE_CHECKING:
    from ml.inference import Analyzer

logger = logging.getLogger(__name__)

MAX_LOADED = 2

_analyzers: OrderedDict[str, Analyzer] = OrderedDict()
_lock = threading.Lock()


def get_analyzer(model_version: str | None = None) -> Analyzer:
    """The Analyzer of `model_version` (None: the active version)."""
    version = model_version or current_model_version()
    with _lock:
        analyzer = _analyzers.get(version)
        if analyzer is not None:
            _analyzers.move_to_end(version)
            return analyzer
        from ml.inference import Analyzer

        directory = version_dir(version)
        if directory is None:
            raise ModelVersionUnavailable(
                f"model {version} is on this worker neither in ML_WEIGHTS_DIR "
                f"({settings.ML_WEIGHTS_DIR}) nor in ML_MODELS_DIR "
                f"({settings.ML_MODELS_DIR})"
            )
        logger.info("loading model %s from %s", version, directory)
        analyzer = Analyzer.load(directory)
        if analyzer.model_version != version:
            raise ModelVersionUnavailable(
                f"{directory} holds {analyzer.model_version}, not {version}"
            )
        _analyzers[version] = analyzer
        while len(_analyzers) > MAX_LOADED:
            dropped, _ = _analyzers.popitem(last=False)
            logger.info("model %s unloaded", dropped)
        logger.info("model %s loaded", version)
        return analyzer


def loaded_versions() -> list[str]:
    with _lock:
        return list(_analyzers)


def preload(**_: Any) -> None:
    """worker_process_init handler: load the active model before the first task."""
    try:
        get_analyzer()
    except Exception:
        # Not fatal here: each task then fails its analyses with the reason.
        logger.exception("could not load the model at worker start")

"""The one Analyzer of this worker process, loaded once and kept.

TensorFlow is imported here on first use only, never at import time, so the prefork
parent stays free of it and the portal never loads it.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from django.conf import settings

if TYPE_CHECKING:
    from ml.inference import Analyzer

logger = logging.getLogger(__name__)

_analyzer: Analyzer | None = None
_lock = threading.Lock()


def get_analyzer() -> Analyzer:
    global _analyzer
    if _analyzer is None:
        with _lock:
            if _analyzer is None:
                from ml.inference import Analyzer

                logger.info("loading model from %s", settings.ML_WEIGHTS_DIR)
                _analyzer = Analyzer.load(settings.ML_WEIGHTS_DIR)
                logger.info("model %s loaded", _analyzer.model_version)
    return _analyzer


def preload(**_: Any) -> None:
    """worker_process_init handler: load the model before the first task arrives."""
    try:
        get_analyzer()
    except Exception:
        # Not fatal here: each task then fails its analyses with the reason.
        logger.exception("could not load the model at worker start")

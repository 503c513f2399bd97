"""A model's result as a worker hands it to the analyses services, for tests that record one."""

from __future__ import annotations

from typing import Any

RESULT = {
    "label": "benign",
    "probabilities": {"normal": 0.1, "benign": 0.7, "malignant": 0.2},
    "confidence": 0.7,
    "lesion_area_fraction": 0.05,
    "bbox": None,
}


def model_result(**fields: Any) -> dict[str, Any]:
    """RESULT with the given fields replaced."""
    return {**RESULT, **fields}


def record_result(
    analysis: Any, *, artifacts: dict[str, bytes] | None = None, **fields: Any
) -> bool:
    """The worker's path: claim the queued analysis, then record model_result(**fields)."""
    from portal.analyses import services

    services.analysis_claim(analysis_id=analysis.pk, worker="test-worker")
    return services.analysis_record_success(
        analysis_id=analysis.pk,
        result=model_result(**fields),
        artifacts=artifacts or {},
    )

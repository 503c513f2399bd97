"""The model registry page's reads: each installed version's card, lineage and comparison
report, and how a shadow version agrees with the active one (and with the signed reads).

Review composes them: the records are the registry's, shadow results sit with analyses,
the signed reads are review's own. Promoting, rolling back and shadowing are the
registry's services (portal.registry.services), called by the views.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from portal.analyses.models import Analysis, ShadowResult
from portal.registry.models import ModelVersion
from portal.registry.services import promotion_concerns
from portal.review.selectors import current_signed_reviews

COMPARISON_MEASURES = (
    ("auc_malignant_vs_benign", "AUC, malignant vs benign"),
    ("recall_normal", "Recall, normal"),
    ("recall_benign", "Recall, benign"),
    ("recall_malignant", "Recall, malignant"),
    ("dice_lesion_mean", "Dice, lesion"),
    ("ece", "ECE (lower is better)"),
)


def comparison_rows(report: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per (set, measure) of a compare report: baseline, candidate, the
    difference with its 95 % paired interval, and the verdict."""
    rows: list[dict[str, Any]] = []
    titles = dict(COMPARISON_MEASURES)
    order = {name: index for index, (name, _) in enumerate(COMPARISON_MEASURES)}
    sets = (report or {}).get("sets") or {}
    # The site's own held-back patients first (JSON columns keep no key order).
    for label in sorted(sets, key=lambda name: (not name.startswith("site:"), name)):
        result = sets[label]
        measures = result.get("measures") or {}
        for name in sorted(measures, key=lambda m: (order.get(m, len(order)), m)):
            measure = measures[name]
            interval = measure.get("ci95")
            rows.append(
                {
                    "set": label,
                    "n": result.get("n"),
                    "patients": result.get("patients"),
                    "measure": titles.get(name, name),
                    "baseline": measure.get("baseline"),
                    "candidate": measure.get("candidate"),
                    "difference": measure.get("difference"),
                    "low": interval[0] if interval else None,
                    "high": interval[1] if interval else None,
                    "verdict": measure.get("verdict") or "n/a",
                }
            )
    return rows


@dataclass(frozen=True)
class VersionView:
    record: ModelVersion
    active: bool
    shadow: bool
    concerns: list[str]
    rows: list[dict[str, Any]]

    @property
    def lineage(self) -> dict[str, Any]:
        return self.record.lineage or {}

    @property
    def finetuned_from(self) -> str:
        return ((self.lineage.get("finetuned_from") or {}).get("version")) or ""


def version_views(
    versions: list[ModelVersion], *, active: str | None, shadow: str | None
) -> list[VersionView]:
    return [
        VersionView(
            record=record,
            active=record.version == active,
            shadow=record.version == shadow,
            concerns=[]
            if record.version == active
            else promotion_concerns(record, active=active),
            rows=comparison_rows(record.comparison),
        )
        for record in versions
    ]


def _rate(hits: int, total: int) -> float | None:
    return hits / total if total else None


@dataclass(frozen=True)
class ShadowAgreement:
    shadow: str
    compared: int  # shadow results beside a finished, shown result
    failed: int  # shadow runs that raised
    label_agreement: float | None
    mean_dice: float | None
    signed: int  # of the compared, scans with a current signed reading
    active_correct: float | None
    shadow_correct: float | None
    active_versions: list[str]


def shadow_agreement(*, shadow: str, limit: int = 20000) -> ShadowAgreement:
    """The shadow's label against the result shown (the active version's), Dice of
    their outlines, and both against the signed reads where there are some (the newest
    `limit` shadow results)."""
    rows = list(
        ShadowResult.objects.filter(model_version=shadow)
        .order_by("-created_at", "-id")
        .values_list(
            "error",
            "label",
            "withheld",
            "mask_dice",
            "analysis__scan_id",
            "analysis__label",
            "analysis__status",
            "analysis__withheld",
            "analysis__model_version",
        )[:limit]
    )
    failed = sum(1 for row in rows if row[0])
    compared = [
        row
        for row in rows
        if not row[0]
        and row[6] == Analysis.Status.SUCCEEDED
        and not row[7]
        and not row[2]
    ]
    signed = dict(
        current_signed_reviews()
        .filter(scan_id__in={row[4] for row in compared})
        .order_by("scan_id", "version")
        .values_list("scan_id", "label")
    )
    dice = [row[3] for row in compared if row[3] is not None]
    with_reads = [row for row in compared if row[4] in signed]
    return ShadowAgreement(
        shadow=shadow,
        compared=len(compared),
        failed=failed,
        label_agreement=_rate(sum(row[1] == row[5] for row in compared), len(compared)),
        mean_dice=sum(dice) / len(dice) if dice else None,
        signed=len(with_reads),
        active_correct=_rate(
            sum(row[5] == signed[row[4]] for row in with_reads), len(with_reads)
        ),
        shadow_correct=_rate(
            sum(row[1] == signed[row[4]] for row in with_reads), len(with_reads)
        ),
        active_versions=sorted({row[8] for row in compared}),
    )

"""How a probability is shown, defined once: pages, the PDF report and the dashboard's
confidence filter use these, so a value reads the same everywhere and a filter compares
what the page shows."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Decimal

from portal.analyses.models import Analysis

# The one order the classes are shown in (the model's own order).
LABELS: tuple[str, ...] = tuple(Analysis.Label.values)
# Pages show a percent with one decimal.
SHOWN_DIGITS = 1


def percent_text(fraction: float | None, digits: int = SHOWN_DIGITS) -> str:
    """0.1964 -> "19.6%", 0.7995 -> "80.0%"; "" for None.

    Rounded half up from the decimal the value is written as: rounding the binary float
    (f"{x * 100:.1f}") shows 0.7995 as 79.9%, which a filter "from 80" could not match.
    """
    if fraction is None:
        return ""
    step = Decimal(1).scaleb(-digits)
    shown = (Decimal(str(float(fraction))) * 100).quantize(step, rounding=ROUND_HALF_UP)
    return f"{shown}%"


def shown_percent_bound(percent: float | None, side: str) -> float | None:
    """A percent bound typed into a filter, as the fraction that compares what pages show.

    0.7995 is shown as 80.0%: "from 80" keeps it (fraction >= 0.7995) and "to 79.9"
    leaves it out (fraction < 0.7995). The bound is the edge of the shown value's
    rounding interval; callers compare >= for side "min" and < for side "max".
    """
    if percent is None:
        return None
    half_digit = Decimal(5).scaleb(-SHOWN_DIGITS - 1)
    shown = Decimal(str(percent))
    edge = shown - half_digit if side == "min" else shown + half_digit
    return float(edge / 100)


def in_label_order(
    probabilities: Mapping[str, float] | None,
) -> list[tuple[str, float]]:
    """{label: p} as (label, p) pairs in LABELS order, whatever order the database
    returned the keys in (PostgreSQL's jsonb sorts them by length: benign, normal, ...)."""
    if not probabilities:
        return []
    return [(label, probabilities[label]) for label in LABELS if label in probabilities]

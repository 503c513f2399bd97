from __future__ import annotations

from typing import Any

from django import template

from portal.review import formats

register = template.Library()


@register.filter
def get_item(mapping: Any, key: Any) -> Any:
    """mapping[key] in a template, None when absent."""
    try:
        return mapping.get(key)
    except AttributeError:
        return None


@register.filter
def percent(fraction: Any, digits: int = formats.SHOWN_DIGITS) -> str:
    """0.1964 -> "19.6%" (formats.percent_text); empty for None."""
    if fraction is None or fraction == "":
        return ""
    return formats.percent_text(float(fraction), int(digits))


@register.filter
def in_label_order(probabilities: Any) -> list[tuple[str, float]]:
    """(label, p) pairs in the product's one class order (formats.in_label_order)."""
    return formats.in_label_order(probabilities)

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


@register.inclusion_tag("review/_outline_editor.html")
def outline_editor(analysis: Any, latest: Any) -> dict[str, Any]:
    """The outline editor for a review form: starts from the latest version's outline
    (the reader's mask where corrected, else the model's)."""
    from django.urls import reverse

    state = latest.outline_state if latest is not None else "model"
    return {
        "scan": analysis.scan,
        "state": state,
        "model_url": (
            reverse("analyses:artifact", args=[analysis.pk, "mask"])
            if analysis.mask
            else ""
        ),
        "review_url": (
            reverse("review:review_outline", args=[latest.pk])
            if latest is not None and latest.outline
            else ""
        ),
    }

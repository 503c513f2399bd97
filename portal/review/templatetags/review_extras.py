from __future__ import annotations

from typing import Any

from django import template

register = template.Library()


@register.filter
def get_item(mapping: Any, key: Any) -> Any:
    """mapping[key] in a template, None when absent."""
    try:
        return mapping.get(key)
    except AttributeError:
        return None


@register.filter
def percent(fraction: Any, digits: int = 1) -> str:
    """0.1964 -> "19.6%"; empty for None."""
    if fraction is None or fraction == "":
        return ""
    return f"{float(fraction) * 100:.{int(digits)}f}%"

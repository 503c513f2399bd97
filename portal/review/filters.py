"""The dashboard's filters, defined once: the dashboard page draws and reads them with
this form, and the API's study list reads its query string with `read_filters`, so a
filter means the same thing (and refuses the same values) in both."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django import forms

from portal.analyses.models import Analysis
from portal.review.formats import shown_percent_bound
from portal.review.selectors import DashboardFilters, filter_facts


class InvalidFilters(ValueError):
    """A query with values the filters refuse; `errors` lists them by field."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items()))
        self.errors = errors


_ANY = [("", "any")]


class DashboardFilterForm(forms.Form):
    q = forms.CharField(
        required=False,
        label="Search",
        widget=forms.TextInput(
            attrs={"placeholder": "Hospital id, accession or name", "type": "search"}
        ),
    )
    patient = forms.CharField(required=False, label="Patient (hospital id)")
    date_from = forms.DateField(
        required=False, label="Study from", widget=forms.DateInput({"type": "date"})
    )
    date_to = forms.DateField(
        required=False, label="Study to", widget=forms.DateInput({"type": "date"})
    )
    label = forms.ChoiceField(
        required=False, choices=_ANY + Analysis.Label.choices, label="Predicted label"
    )
    confidence_min = forms.FloatField(
        required=False, min_value=0, max_value=100, label="Confidence from (%)"
    )
    confidence_max = forms.FloatField(
        required=False, min_value=0, max_value=100, label="Confidence to (%)"
    )
    review = forms.ChoiceField(
        required=False,
        choices=[*_ANY, ("reviewed", "reviewed"), ("unreviewed", "unreviewed")],
        label="Review",
    )
    status = forms.ChoiceField(
        required=False, choices=_ANY + Analysis.Status.choices, label="Analysis"
    )
    model_version = forms.ChoiceField(required=False, label="Model version")
    distribution = forms.ChoiceField(
        required=False,
        choices=[
            *_ANY,
            ("withheld", "withheld: not a breast ultrasound"),
            ("outside", "unusual for this model (caution)"),
            ("inside", "usual for this model"),
        ],
        label="Gate and caution",
    )

    def __init__(self, *args: object, model_versions: list[str], **kwargs: object):
        super().__init__(*args, **kwargs)
        self.fields["model_version"].choices = _ANY + [(v, v) for v in model_versions]

    def filters(self) -> DashboardFilters:
        """The filters whose values are valid; a refused value drops that filter only
        (`ignored` names it), never the others."""
        self.is_valid()  # an unbound form has no cleaned_data: no filter
        data = getattr(self, "cleaned_data", {})

        def value(name: str, default: Any = "") -> Any:
            found = data.get(name)
            return default if found in (None, "") else found

        return DashboardFilters(
            patient=value("patient").strip(),
            date_from=value("date_from", None),
            date_to=value("date_to", None),
            label=value("label"),
            confidence_min=shown_percent_bound(value("confidence_min", None), "min"),
            confidence_max=shown_percent_bound(value("confidence_max", None), "max"),
            review=value("review"),
            status=value("status"),
            model_version=value("model_version"),
            search=value("q").strip(),
            distribution=value("distribution"),
        )

    def ignored(self) -> list[str]:
        """What the page says it dropped: "<field label> (<value>): <why>", one a filter."""
        if not self.is_bound or self.is_valid():
            return []
        return [
            f"{self.fields[name].label} ({self.data.get(name, '')}): {' '.join(errors)}"
            if name in self.fields
            else " ".join(errors)
            for name, errors in self.errors.items()
        ]


def read_filters(query: Mapping[str, Any]) -> DashboardFilters:
    """The filters a query string asks for; InvalidFilters when a value is refused."""
    facts = filter_facts(search=query.get("q") or "")
    form = DashboardFilterForm(query, model_versions=facts.model_versions)
    if not form.is_valid():
        raise InvalidFilters(
            {
                name: [error["message"] for error in errors]
                for name, errors in form.errors.get_json_data(escape_html=False).items()
            }
        )
    return facts.read(form.filters())

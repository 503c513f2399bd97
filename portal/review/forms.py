from __future__ import annotations

from django import forms

from portal.analyses.models import Analysis
from portal.review.models import BiRads
from portal.review.selectors import DashboardFilters

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

    def __init__(self, *args: object, model_versions: list[str], **kwargs: object):
        super().__init__(*args, **kwargs)
        self.fields["model_version"].choices = _ANY + [(v, v) for v in model_versions]

    def filters(self) -> DashboardFilters:
        if not self.is_valid():
            return DashboardFilters()
        data = self.cleaned_data

        def fraction(value: float | None) -> float | None:
            return None if value is None else value / 100.0

        return DashboardFilters(
            patient=data["patient"].strip(),
            date_from=data["date_from"],
            date_to=data["date_to"],
            label=data["label"],
            confidence_min=fraction(data["confidence_min"]),
            confidence_max=fraction(data["confidence_max"]),
            review=data["review"],
            status=data["status"],
            model_version=data["model_version"],
            search=data["q"].strip(),
        )


class ReviewForm(forms.Form):
    agrees_with_model = forms.TypedChoiceField(
        choices=[("yes", "Agree with the model"), ("no", "Correct the label")],
        coerce=lambda value: value == "yes",
        widget=forms.RadioSelect,
        label="Model's label",
        initial="yes",
    )
    label = forms.ChoiceField(
        choices=Analysis.Label.choices,
        required=False,
        label="Corrected label",
    )
    # No default: the reader chooses a category on purpose.
    birads = forms.ChoiceField(
        choices=[("", "choose a category"), *BiRads.choices], label="BI-RADS category"
    )
    note = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4}), required=False, label="Note"
    )

    def clean(self) -> dict:
        data = super().clean()
        if data.get("agrees_with_model") is False and not data.get("label"):
            self.add_error("label", "Choose the label you read.")
        return data

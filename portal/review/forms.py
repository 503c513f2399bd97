from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from portal.analyses.models import Analysis
from portal.clinical.models import Pathology
from portal.clinical.scanners import Scanner
from portal.review.models import BiRads, OutlineState
from portal.review.outlines import decode_outline_png
from portal.review.services import correction_error


class ReviewForm(forms.Form):
    agrees_with_model = forms.TypedChoiceField(
        choices=[("yes", "Agree with the model"), ("no", "Correct the label")],
        coerce=lambda value: value == "yes",
        widget=forms.RadioSelect,
        label="Model's label",
        initial="yes",
    )
    label = forms.ChoiceField(
        choices=[("", "—"), *Analysis.Label.choices],
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

    def __init__(self, *args: object, model_label: str = "", **kwargs: object):
        super().__init__(*args, **kwargs)
        self.model_label = model_label

    # Written by the outline editor (review/_outline_editor.html): empty keeps the
    # outline of the version before; "corrected" comes with the mask as a PNG data URL.
    outline_state = forms.ChoiceField(
        choices=[("", "keep"), *OutlineState.choices],
        required=False,
        widget=forms.HiddenInput,
    )
    outline_mask = forms.CharField(required=False, widget=forms.HiddenInput)

    def clean_outline_mask(self):
        value = self.cleaned_data.get("outline_mask") or ""
        if self.data.get("outline_state") != OutlineState.CORRECTED:
            return None
        if not value:
            raise ValidationError("A corrected outline comes with its mask.")
        return decode_outline_png(value)

    def clean(self) -> dict:
        data = super().clean()
        if data.get("agrees_with_model") is False:
            if not data.get("label"):
                self.add_error("label", "Choose the label you read.")
            elif problem := correction_error(
                model_label=self.model_label, label=data["label"]
            ):
                self.add_error("label", problem)
        return data


def scope_name(scanner: Scanner) -> str:
    return "All scanners (site-wide)" if scanner.is_site else scanner.name


class CalibrationFitForm(forms.Form):
    target_sensitivity = forms.FloatField(
        min_value=0.5,
        max_value=0.99,
        initial=0.90,
        label="Target malignant sensitivity",
        help_text="The share of malignant lesions the suspicious flag must catch on "
        "this site's signed reads (0.5-0.99).",
    )
    scanner = forms.ChoiceField(
        required=False,
        label="Fit on",
        help_text="All the site's signed reads, or one scanner model's (DICOM "
        "Manufacturer and Manufacturer's Model Name), with its signed reads counted.",
    )

    def __init__(self, *args: Any, scanners: Sequence[Any] = (), **kwargs: Any):
        super().__init__(*args, **kwargs)
        # scanners: portal.review.calibration.ScannerReads, the site first.
        self.fields["scanner"].choices = [
            (item.scanner.key, f"{scope_name(item.scanner)}: {item.reads} signed reads")
            for item in scanners
        ]

    def clean_scanner(self) -> Scanner:
        try:
            return Scanner.from_key(self.cleaned_data.get("scanner") or "")
        except ValueError:
            raise forms.ValidationError(
                "Choose a scanner model from the list."
            ) from None


class PathologyForm(forms.Form):
    outcome = forms.ChoiceField(
        choices=[("", "none recorded"), *Pathology.choices],
        required=False,
        label="Biopsy outcome",
    )
    biopsy_date = forms.DateField(
        required=False,
        label="Biopsy date",
        widget=forms.DateInput(attrs={"type": "date"}),
    )

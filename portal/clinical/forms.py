from __future__ import annotations

from django import forms

from portal.clinical.models import Patient, Study


class PatientForm(forms.ModelForm):
    class Meta:
        model = Patient
        fields = ("identifier", "name", "birth_date")
        widgets = {"birth_date": forms.DateInput(attrs={"type": "date"})}  # noqa: RUF012


class StudyForm(forms.ModelForm):
    class Meta:
        model = Study
        fields = ("accession_number", "study_date", "description")
        widgets = {"study_date": forms.DateInput(attrs={"type": "date"})}  # noqa: RUF012


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    """Accepts several files; each is validated by the upload service, not here."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault(
            "widget", MultipleFileInput(attrs={"accept": "image/*,.dcm,.zip"})
        )
        super().__init__(*args, **kwargs)

    def clean(self, data: object, initial: object = None) -> list:
        if isinstance(data, (list, tuple)):
            if not data and self.required:
                raise forms.ValidationError("Choose at least one file.")
            return list(data)
        if not data and self.required:
            raise forms.ValidationError("Choose at least one file.")
        return [data] if data else []


class ScanUploadForm(forms.Form):
    files = MultipleFileField(label="Ultrasound images")

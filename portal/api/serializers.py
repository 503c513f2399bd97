from __future__ import annotations

from typing import Any

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from portal.analyses.composites import available_kinds
from portal.analyses.models import RESULT_FIELDS, Analysis
from portal.analyses.selectors import (
    LesionMalignancy,
    latest_analysis,
    lesion_malignancies,
    study_malignancies,
)
from portal.clinical.models import Pathology, Patient, Scan, Study
from portal.ingest.models import UploadItem
from portal.review.formats import LABELS, in_label_order
from portal.review.selectors import current_signed_review


def _absolute(context: dict[str, Any], path: str) -> str:
    request = context.get("request")
    return request.build_absolute_uri(path) if request is not None else path


def _nullable_list(item_type: str, description: str) -> dict[str, Any]:
    """The OpenAPI schema of a field that is a list of item_type, or null."""
    return {
        "type": "array",
        "nullable": True,
        "items": {"type": item_type},
        "description": description,
    }


class TokenRequestSerializer(serializers.Serializer):
    username = serializers.CharField()
    password = serializers.CharField(
        style={"input_type": "password"}, trim_whitespace=False
    )


class TokenSerializer(serializers.Serializer):
    token = serializers.CharField(read_only=True)
    expiry = serializers.DateTimeField(read_only=True)


class PatientSerializer(serializers.ModelSerializer):
    identifier = serializers.CharField(
        max_length=64, help_text="The hospital identifier (unique)."
    )

    class Meta:
        model = Patient
        fields = ("id", "identifier", "name", "birth_date", "created_at")
        read_only_fields = ("id", "created_at")

    def validate_identifier(self, value: str) -> str:
        value = value.strip()
        existing = Patient.objects.filter(identifier=value).first()
        if existing is not None:
            raise serializers.ValidationError(
                f"a patient with hospital identifier {value!r} already exists "
                f"(id {existing.pk}); use it instead of creating another"
            )
        return value


class PatientBriefSerializer(serializers.ModelSerializer):
    class Meta:
        model = Patient
        fields = ("id", "identifier", "name", "birth_date")


@extend_schema_field(OpenApiTypes.URI)
class ArtifactUrlField(serializers.Field):
    """The absolute URL of one of an analysis's stored files, by its kind; null when the
    analysis has no such file."""

    def __init__(self, kind: str, **kwargs: Any) -> None:
        self.kind = kind
        super().__init__(source="*", read_only=True, **kwargs)

    def to_representation(self, analysis: Analysis) -> str | None:
        if self.kind not in available_kinds(analysis):
            return None
        return _absolute(
            self.context,
            reverse("api:analysis-artifact", args=[analysis.pk, self.kind]),
        )


class AnalysisSerializer(serializers.ModelSerializer):
    probabilities = serializers.SerializerMethodField()
    bbox = serializers.SerializerMethodField()
    scan = serializers.IntegerField(source="scan_id", read_only=True)
    mask_url = ArtifactUrlField("mask")
    overlay_url = ArtifactUrlField("overlay")
    gradcam_url = ArtifactUrlField("gradcam")
    seg_gradcam_url = ArtifactUrlField("seg_gradcam")
    gradcam_map_url = ArtifactUrlField(
        "gradcam_map",
        help_text="The classification heatmap as an 8-bit grey PNG at the network's size.",
    )
    seg_gradcam_map_url = ArtifactUrlField("seg_gradcam_map")
    retry_url = serializers.SerializerMethodField()

    class Meta:
        model = Analysis
        fields = (
            "id",
            "scan",
            "status",
            *RESULT_FIELDS,
            "model_version",
            "error",
            "attempts",
            "queued_at",
            "started_at",
            "finished_at",
            "mask_url",
            "overlay_url",
            "gradcam_url",
            "seg_gradcam_url",
            "gradcam_map_url",
            "seg_gradcam_map_url",
            "retry_url",
        )
        read_only_fields = fields

    @extend_schema_field(
        {
            "type": "object",
            "nullable": True,
            "description": (
                "Class probabilities as fractions (0-1), in the order normal, benign, "
                "malignant; pages and the PDF show them as percents with one decimal."
            ),
            "properties": {k: {"type": "number"} for k in LABELS},
            "example": {"normal": 0.031, "benign": 0.172, "malignant": 0.797},
        }
    )
    def get_probabilities(self, analysis: Analysis) -> dict[str, float] | None:
        if analysis.probabilities is None:
            return None
        return dict(in_label_order(analysis.probabilities))

    @extend_schema_field(
        _nullable_list(
            "integer", "x_min, y_min, x_max, y_max in pixels (max exclusive)"
        )
    )
    def get_bbox(self, analysis: Analysis) -> list[int] | None:
        return analysis.bbox

    @extend_schema_field(OpenApiTypes.URI)
    def get_retry_url(self, analysis: Analysis) -> str | None:
        if not analysis.can_retry:
            return None
        return _absolute(
            self.context, reverse("api:analysis-retry", args=[analysis.pk])
        )


class ScanSerializer(serializers.ModelSerializer):
    filename = serializers.CharField(source="original_filename")
    pixel_spacing_mm = serializers.SerializerMethodField()
    original_url = serializers.SerializerMethodField()
    latest_analysis = serializers.SerializerMethodField()
    signed_outline = serializers.SerializerMethodField()

    class Meta:
        model = Scan
        fields = (
            "id",
            "filename",
            "format",
            "width",
            "height",
            "pixel_spacing_mm",
            "scanner_manufacturer",
            "scanner_model",
            "sha256",
            "uploaded_at",
            "original_url",
            "latest_analysis",
            "signed_outline",
        )
        read_only_fields = fields

    @extend_schema_field(_nullable_list("number", "row, column spacing in mm (DICOM)"))
    def get_pixel_spacing_mm(self, scan: Scan) -> list[float] | None:
        if scan.pixel_spacing_row_mm is None or scan.pixel_spacing_col_mm is None:
            return None
        return [scan.pixel_spacing_row_mm, scan.pixel_spacing_col_mm]

    @extend_schema_field(OpenApiTypes.URI)
    def get_original_url(self, scan: Scan) -> str:
        return _absolute(self.context, reverse("api:scan-original", args=[scan.pk]))

    @extend_schema_field(AnalysisSerializer(allow_null=True))
    def get_latest_analysis(self, scan: Scan) -> dict[str, Any] | None:
        analysis = latest_analysis(scan=scan)
        if analysis is None:
            return None
        return AnalysisSerializer(analysis, context=self.context).data

    @extend_schema_field(
        {
            "type": "object",
            "nullable": True,
            "description": "The lesion outline of the signed reading (null: not signed "
            "yet). state: corrected (mask_url is the reader's mask), no_lesion, or "
            "model (the model's outline stands, labelled as the model's: "
            "latest_analysis.mask_url).",
            "properties": {
                "state": {
                    "type": "string",
                    "enum": ["corrected", "no_lesion", "model"],
                },
                "review_version": {"type": "integer"},
                "mask_url": {"type": "string", "format": "uri", "nullable": True},
            },
        }
    )
    def get_signed_outline(self, scan: Scan) -> dict[str, Any] | None:
        review = current_signed_review(scan=scan)
        if review is None:
            return None
        return {
            "state": review.outline_state,
            "review_version": review.version,
            "mask_url": (
                _absolute(
                    self.context, reverse("api:scan-signed-outline", args=[scan.pk])
                )
                if review.outline
                else None
            ),
        }


class StudyMalignancySerializer(serializers.Serializer):
    """The study-level result: the most suspicious image's calibrated malignant
    probability, and which image (scan and analysis) drives it."""

    malignant = serializers.FloatField()
    scan = serializers.IntegerField(source="scan_id")
    analysis = serializers.IntegerField(source="analysis_id")
    filename = serializers.CharField()
    images = serializers.IntegerField(help_text="finished results aggregated")
    rule = serializers.CharField(help_text="how the images' results are combined")


class LesionBiopsySerializer(serializers.Serializer):
    """A lesion's biopsy outcome, entered from the pathology report: ground truth."""

    outcome = serializers.ChoiceField(choices=Pathology.choices, source="pathology")
    date = serializers.DateField(
        source="pathology_date", allow_null=True, help_text="the biopsy's, where known"
    )


class LesionSerializer(serializers.Serializer):
    """A lesion a reader grouped the study's images into, its result (the study's rule
    over the lesion's images alone) and its biopsy outcome."""

    label = serializers.CharField(
        help_text="A, B, ... in the order the reader made them"
    )
    scans = serializers.ListField(
        source="scan_ids",
        child=serializers.IntegerField(),
        help_text="ids of the study's scans that show this lesion, in upload order",
    )
    malignancy = StudyMalignancySerializer(
        source="result",
        allow_null=True,
        help_text="null while none of the lesion's images has a finished result",
    )
    biopsy = serializers.SerializerMethodField()

    @extend_schema_field(LesionBiopsySerializer(allow_null=True))
    def get_biopsy(self, lesion: LesionMalignancy) -> dict[str, Any] | None:
        """null while no biopsy outcome is recorded for the lesion."""
        if not lesion.pathology:
            return None
        return LesionBiopsySerializer(lesion).data


class StudyListSerializer(serializers.ListSerializer):
    """Reads the study-level and lesion results of a whole page in one query and two,
    however many studies and lesions it holds."""

    def to_representation(self, data: Any) -> list[Any]:
        studies = list(data.all() if hasattr(data, "all") else data)
        study_ids = [study.pk for study in studies]
        self.context["study_malignancies"] = study_malignancies(study_ids=study_ids)
        self.context["lesion_malignancies"] = lesion_malignancies(study_ids=study_ids)
        return super().to_representation(studies)


class StudySerializer(serializers.ModelSerializer):
    patient = PatientBriefSerializer(read_only=True)
    scan_count = serializers.IntegerField(read_only=True)
    url = serializers.SerializerMethodField()
    study_malignancy = serializers.SerializerMethodField()
    lesions = serializers.SerializerMethodField()

    class Meta:
        model = Study
        fields = (
            "id",
            "patient",
            "accession_number",
            "study_instance_uid",
            "study_date",
            "description",
            "created_at",
            "scan_count",
            "url",
            "study_malignancy",
            "lesions",
        )
        read_only_fields = fields
        list_serializer_class = StudyListSerializer

    @extend_schema_field(OpenApiTypes.URI)
    def get_url(self, study: Study) -> str:
        return _absolute(self.context, reverse("api:study-detail", args=[study.pk]))

    @extend_schema_field(StudyMalignancySerializer(allow_null=True))
    def get_study_malignancy(self, study: Study) -> dict[str, Any] | None:
        known = self.context.get("study_malignancies")
        if known is None:
            known = study_malignancies(study_ids=[study.pk])
        result = known.get(study.pk)
        return None if result is None else StudyMalignancySerializer(result).data

    @extend_schema_field(LesionSerializer(many=True))
    def get_lesions(self, study: Study) -> list[dict[str, Any]]:
        """Images in no lesion count in study_malignancy only."""
        known = self.context.get("lesion_malignancies")
        if known is None:
            known = lesion_malignancies(study_ids=[study.pk])
        return LesionSerializer(known.get(study.pk, []), many=True).data


class StudyDetailSerializer(StudySerializer):
    scans = ScanSerializer(many=True, read_only=True)

    class Meta(StudySerializer.Meta):
        fields = (*StudySerializer.Meta.fields, "scans")
        read_only_fields = fields


class StudyCreateSerializer(serializers.Serializer):
    patient = serializers.CharField(
        max_length=64, help_text="The patient's hospital identifier."
    )
    accession_number = serializers.CharField(
        max_length=64, required=False, allow_blank=True, default=""
    )
    description = serializers.CharField(
        max_length=255, required=False, allow_blank=True, default=""
    )
    study_date = serializers.DateField(
        required=False, allow_null=True, default=None, help_text="Default: today."
    )

    def validate_patient(self, value: str) -> Patient:
        patient = Patient.objects.filter(identifier=value.strip()).first()
        if patient is None:
            raise serializers.ValidationError(
                f"no patient with hospital identifier {value.strip()!r}; create it "
                "first with POST /api/v1/patients/"
            )
        return patient


class UploadRequestSerializer(serializers.Serializer):
    files = serializers.ListField(
        child=serializers.FileField(),
        help_text="One or more images (PNG, JPEG, BMP, TIFF), DICOM files or zips.",
    )


# What every row of an upload report (item_row) starts with. A comment, not a
# docstring: the schema would give it as the description of each row below.
class _ReportedFileSerializer(serializers.Serializer):
    filename = serializers.CharField()
    archive = serializers.CharField(allow_null=True)


class AcceptedFileSerializer(_ReportedFileSerializer):
    scan = serializers.IntegerField()
    analysis = serializers.IntegerField()
    status = serializers.CharField()


class DuplicateFileSerializer(_ReportedFileSerializer):
    scan = serializers.IntegerField()
    analysis = serializers.IntegerField(allow_null=True)
    status = serializers.CharField(allow_null=True)


class RejectedFileSerializer(_ReportedFileSerializer):
    error = serializers.CharField()


class UploadReportSerializer(serializers.Serializer):
    batch = serializers.IntegerField()
    progress_url = serializers.URLField()
    accepted = AcceptedFileSerializer(many=True)
    duplicates = DuplicateFileSerializer(many=True)
    rejected = RejectedFileSerializer(many=True)


def item_row(item: UploadItem) -> dict[str, Any]:
    """One file of an upload report, in the API's shape."""
    row: dict[str, Any] = {"filename": item.filename, "archive": item.archive or None}
    if item.outcome == UploadItem.Outcome.REJECTED:
        row["error"] = item.reason
        return row
    row["scan"] = item.scan_id
    row["analysis"] = item.analysis_id
    row["status"] = item.analysis.status if item.analysis else None
    if item.review_flag:
        row["review_flag"] = item.review_flag
    return row


class BatchSerializer(serializers.Serializer):
    batch = serializers.IntegerField()
    study = serializers.IntegerField(allow_null=True)
    images = serializers.IntegerField()
    analysed = serializers.IntegerField()
    failed = serializers.IntegerField()
    running = serializers.IntegerField()
    queued = serializers.IntegerField()
    accepted = AcceptedFileSerializer(many=True)
    duplicates = DuplicateFileSerializer(many=True)
    rejected = RejectedFileSerializer(many=True)
    finished = serializers.BooleanField()

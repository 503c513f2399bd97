"""Uploads: a batch's report and the progress of its analyses."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from portal.api.permissions import needs
from portal.api.serializers import (
    BatchSerializer,
    item_row,
)
from portal.api.views.base import PortalAPIView, get_or_not_found
from portal.audit.services import Action, record_access
from portal.ingest.models import UploadBatch, UploadItem
from portal.ingest.selectors import batch_items, batch_progress

Outcome = UploadItem.Outcome


class BatchDetailView(PortalAPIView):
    required_permissions = needs(GET=("clinical.view_study", "clinical.view_scan"))

    @extend_schema(
        responses={200: BatchSerializer},
        summary="An upload's report and the progress of its analyses",
    )
    def get(self, request: Request, pk: int) -> Response:
        batch = get_or_not_found(UploadBatch.objects.all(), pk)
        record_access(request, batch, action=Action.VIEW, detail="api batch")
        progress = batch_progress(batch=batch)
        rows: dict[str, list[dict[str, Any]]] = {o: [] for o in Outcome.values}
        for item in batch_items(batch=batch):
            rows[item.outcome].append(item_row(item))
        body = {
            key: progress[key]
            for key in (
                "batch",
                "study",
                "images",
                "analysed",
                "failed",
                "running",
                "queued",
                "finished",
            )
        }
        body.update(
            accepted=rows[Outcome.ACCEPTED],
            duplicates=rows[Outcome.DUPLICATE],
            rejected=rows[Outcome.REJECTED],
        )
        return Response(body)

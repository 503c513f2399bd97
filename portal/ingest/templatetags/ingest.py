"""`{% upload_panel study %}`: the study page's live progress of its latest upload."""

from __future__ import annotations

from typing import Any

from django import template

from portal.clinical.models import Study
from portal.ingest.models import UploadItem
from portal.ingest.selectors import batch_progress, latest_batch

register = template.Library()


@register.inclusion_tag("ingest/upload_panel.html", takes_context=True)
def upload_panel(context: dict[str, Any], study: Study) -> dict[str, Any]:
    batch = latest_batch(study=study)
    if batch is None:
        return {"batch": None}
    request = context.get("request")
    # Right after a browser upload (?batch=N) the page lists what was not taken as new.
    just_uploaded = request is not None and request.GET.get("batch") == str(batch.pk)
    rows = (
        batch.items.exclude(outcome=UploadItem.Outcome.ACCEPTED).order_by("id")[:200]
        if just_uploaded
        else []
    )
    return {
        "batch": batch,
        "progress": batch_progress(batch=batch),
        "show_rows": just_uploaded,
        "rows": rows,
    }

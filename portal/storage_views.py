"""Files leave storage only through login-protected views that stream them."""

from __future__ import annotations

import logging
import mimetypes
from pathlib import PurePosixPath

from django.core.files.storage import default_storage
from django.http import FileResponse, Http404

logger = logging.getLogger(__name__)


def stream_from_storage(name: str, *, download_name: str) -> FileResponse:
    if not name:
        raise Http404("no such file")
    try:
        stored = default_storage.open(name, "rb")
    except FileNotFoundError:
        logger.warning("stored file %s is missing", name)
        raise Http404("file is missing from storage") from None
    suffix = PurePosixPath(name).suffix
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    response = FileResponse(
        stored, content_type=content_type, filename=f"{download_name}{suffix}"
    )
    response["Cache-Control"] = "private, max-age=0, no-store"
    response["X-Content-Type-Options"] = "nosniff"
    return response

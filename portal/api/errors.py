"""Every API error is JSON: {"error": a sentence a person can act on, "code", "fields"}."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

logger = logging.getLogger(__name__)

TOKEN_HINT = (
    "Send the header 'Authorization: Token <key>'; get a key with "
    "POST /api/v1/auth/token/ and your portal username and password."
)


def _flatten(detail: Any) -> list[str]:
    if isinstance(detail, dict):
        return [m for value in detail.values() for m in _flatten(value)]
    if isinstance(detail, list):
        return [m for value in detail for m in _flatten(value)]
    return [str(detail)]


def _field_sentences(fields: dict[str, Any]) -> str:
    parts = []
    for name, detail in fields.items():
        messages = " ".join(_flatten(detail))
        parts.append(messages if name == "non_field_errors" else f"{name}: {messages}")
    return "; ".join(parts)


def _message(exc: exceptions.APIException, data: Any) -> str:
    if isinstance(exc, exceptions.ValidationError):
        if isinstance(data, dict):
            return f"Check the request: {_field_sentences(data)}"
        return "Check the request: " + " ".join(_flatten(data))
    detail = " ".join(
        _flatten(data.get("detail", data) if isinstance(data, dict) else data)
    )
    if isinstance(exc, exceptions.NotAuthenticated):
        return f"Authentication required. {TOKEN_HINT}"
    if isinstance(exc, exceptions.AuthenticationFailed):
        return f"{detail.rstrip('.')}. {TOKEN_HINT}"
    if isinstance(exc, exceptions.Throttled):
        wait = f" in {int(exc.wait) + 1} seconds" if exc.wait is not None else " later"
        return f"Too many requests from this account; try again{wait}."
    if isinstance(exc, exceptions.MethodNotAllowed):
        return f"{detail.rstrip('.')}; see the allowed methods in the Allow header."
    if isinstance(exc, exceptions.UnsupportedMediaType):
        return (
            f"{detail.rstrip('.')}. Send JSON (Content-Type: application/json), or "
            "multipart/form-data for file uploads."
        )
    return detail


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DjangoValidationError):
        # A model's full_clean() in a service: the same 400 as a serializer's errors.
        exc = exceptions.ValidationError(
            exc.message_dict if hasattr(exc, "error_dict") else exc.messages
        )
    response = drf_exception_handler(exc, context)
    if response is None:
        # Not an API error: log it and answer in JSON rather than an HTML error page.
        logger.exception(
            "unhandled error in API view %s", type(context.get("view")).__name__
        )
        return Response(
            {
                "error": "Internal error: the request was not completed. Try again; if "
                "it keeps failing, tell the administrators (the error is logged).",
                "code": "server_error",
            },
            status=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )
    if isinstance(exc, exceptions.APIException):
        data = response.data
        body: dict[str, Any] = {"error": _message(exc, data)}
        codes = exc.get_codes()
        body["code"] = codes if isinstance(codes, str) else exc.default_code
        if isinstance(exc, exceptions.ValidationError) and isinstance(data, dict):
            body["fields"] = data
        response.data = body
    elif isinstance(response.data, dict) and "detail" in response.data:
        # Http404 and PermissionDenied from Django, converted by DRF.
        response.data = {
            "error": str(response.data["detail"]),
            "code": "not_found" if response.status_code == 404 else "permission_denied",
        }
    return response

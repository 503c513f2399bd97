"""Structured logs: one JSON object per line with the ids of what is being worked on.

`log_context(analysis_id=..., scan_id=...)` puts ids on every record logged inside it
(in this thread or task), so a line says which analysis it is about without each call
site formatting ids into its message. Ids only: never patient names or identifiers.

LOG_FORMAT=json in production (one object per line, for a log shipper); the default
"plain" format appends the same ids as key=value pairs for people reading a terminal.
"""

from __future__ import annotations

import contextvars
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pythonjsonlogger.json

CONTEXT_FIELDS = (
    "request_id",
    "user_id",
    "task_id",
    "study_id",
    "scan_id",
    "analysis_id",
)
_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "log_context", default=None
)


@contextmanager
def log_context(**ids: Any) -> Iterator[None]:
    merged = {
        **(_context.get() or {}),
        **{k: v for k, v in ids.items() if v is not None},
    }
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> dict[str, Any]:
    return dict(_context.get() or {})


class ContextFilter(logging.Filter):
    """Copies the current ids onto each record (explicit `extra=` values win)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in (_context.get() or {}).items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class JsonFormatter(pythonjsonlogger.json.JsonFormatter):
    """python-json-logger's formatter, writing only the fields named here.

    Records carry other attributes too (Django's request log puts the request on the
    record, and its text holds the query string, where a search may be a patient's
    name), so nothing else is copied into the line.
    """

    FIELDS = frozenset(
        {"ts", "level", "logger", "message", "exc_info", "stack_info", *CONTEXT_FIELDS}
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(
            "{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="ts",
            json_ensure_ascii=False,
        )

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        return {
            key: value
            for key, value in log_data.items()
            if key in self.FIELDS and value is not None
        }


class PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = " ".join(
            f"{name}={getattr(record, name)}"
            for name in CONTEXT_FIELDS
            if getattr(record, name, None) is not None
        )
        return f"{line} [{ids}]" if ids else line


class RequestContextMiddleware:
    """Puts a request id (the proxy's X-Request-ID when sane) and the user id on logs."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        incoming = request.headers.get("X-Request-ID", "")
        request_id = (
            incoming
            if 0 < len(incoming) <= 64 and incoming.replace("-", "").isalnum()
            else uuid.uuid4().hex[:16]
        )
        user = getattr(request, "user", None)
        user_id = user.pk if user is not None and user.is_authenticated else None
        with log_context(request_id=request_id, user_id=user_id):
            response = self.get_response(request)
        response["X-Request-ID"] = request_id
        return response

"""DICOM TLS: the SSL contexts of the listener and of sending to the PACS.

PS3.15's secure transport connection profiles (BCP 195) ask for TLS 1.2 or newer with
certificates; Python's default contexts choose the ciphers. The listener requires a
client certificate from a CA of DICOM_TLS_CA_FILE when that is set (mutual TLS, what a
hospital's PACS team expects); sending always checks the PACS's certificate and host
name.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def _readable(name: str, path: str) -> str:
    if not Path(path).is_file():
        raise ImproperlyConfigured(f"{name}: {path} is not a readable file")
    return path


def server_context(
    *, cert_file: str, key_file: str, ca_file: str = ""
) -> ssl.SSLContext:
    """The listener's context: its certificate, and client certificates required from
    `ca_file`'s CAs when given."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(
        _readable("DICOM_TLS_CERT_FILE", cert_file),
        _readable("DICOM_TLS_KEY_FILE", key_file),
    )
    if ca_file:
        context.load_verify_locations(cafile=_readable("DICOM_TLS_CA_FILE", ca_file))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    *, ca_file: str = "", cert_file: str = "", key_file: str = ""
) -> ssl.SSLContext:
    """Sending's context: the peer's certificate and host name checked (against
    `ca_file`, else the system's CAs), ours presented when given."""
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH,
        cafile=_readable("DICOM_TLS_CA_FILE", ca_file) if ca_file else None,
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        context.load_cert_chain(
            _readable("DICOM_TLS_CERT_FILE", cert_file),
            _readable("DICOM_TLS_KEY_FILE", key_file),
        )
    return context


def listener_context() -> ssl.SSLContext | None:
    """From the settings: None when the listener is not configured for TLS."""
    if not settings.DICOM_TLS_CERT_FILE:
        return None
    return server_context(
        cert_file=settings.DICOM_TLS_CERT_FILE,
        key_file=settings.DICOM_TLS_KEY_FILE,
        ca_file=settings.DICOM_TLS_CA_FILE,
    )


def destination_context() -> ssl.SSLContext | None:
    """From the settings: None when results are sent without TLS."""
    if not settings.DICOM_DESTINATION_TLS:
        return None
    return client_context(
        ca_file=settings.DICOM_TLS_CA_FILE,
        cert_file=settings.DICOM_TLS_CERT_FILE,
        key_file=settings.DICOM_TLS_KEY_FILE,
    )

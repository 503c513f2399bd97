"""The DICOM settings refuse malformed AE titles and destinations at start."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from portal.settings import env_ae_title, env_dicom_destination


def test_an_ae_title_is_16_printable_characters_without_backslash(monkeypatch):
    monkeypatch.setenv("DICOM_AE_TITLE", " BUSAI ")
    assert env_ae_title("DICOM_AE_TITLE", "X") == "BUSAI"
    for bad in ("", "A" * 17, "US\\ROOM", "caf\u00e9"):
        monkeypatch.setenv("DICOM_AE_TITLE", bad)
        with pytest.raises(ImproperlyConfigured, match="DICOM_AE_TITLE"):
            env_ae_title("DICOM_AE_TITLE", "X")


def test_a_destination_is_ae_at_host_colon_port(monkeypatch):
    monkeypatch.delenv("DICOM_DESTINATION", raising=False)
    assert env_dicom_destination("DICOM_DESTINATION") is None
    monkeypatch.setenv("DICOM_DESTINATION", "PACS_MAIN@pacs.example.org:104")
    assert env_dicom_destination("DICOM_DESTINATION") == {
        "ae_title": "PACS_MAIN",
        "host": "pacs.example.org",
        "port": 104,
    }
    monkeypatch.setenv("DICOM_DESTINATION", "PACS@[::1]:11112")
    assert env_dicom_destination("DICOM_DESTINATION")["host"] == "::1"
    for bad in ("pacs.example.org:104", "PACS@host", "PACS@host:0", "PACS@:104"):
        monkeypatch.setenv("DICOM_DESTINATION", bad)
        with pytest.raises(ImproperlyConfigured, match="DICOM_DESTINATION"):
            env_dicom_destination("DICOM_DESTINATION")

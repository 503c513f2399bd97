from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from portal.settings import env_bool, env_choice, env_float, env_int, env_list
from tests.portal.conftest import run_python

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_env_bool_reads_common_spellings(monkeypatch):
    for raw, expected in [("1", True), ("TRUE", True), ("off", False), ("0", False)]:
        monkeypatch.setenv("FLAG", raw)
        assert env_bool("FLAG") is expected
    monkeypatch.delenv("FLAG")
    assert env_bool("FLAG", True) is True


def test_env_bool_rejects_garbage(monkeypatch):
    monkeypatch.setenv("FLAG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="FLAG"):
        env_bool("FLAG")


@pytest.mark.parametrize(
    ("read", "garbage", "expected", "below_minimum", "good", "value"),
    [
        (env_int, ["ten"], "an integer", "0", "42", 42),
        (env_float, ["ten", "nan", "inf"], "a", "0.5", "2.5", 2.5),
    ],
)
def test_env_numbers_reject_non_numbers_infinities_and_values_below_minimum(
    monkeypatch, read, garbage, expected, below_minimum, good, value
):
    for raw in garbage:
        monkeypatch.setenv("LIMIT", raw)
        with pytest.raises(ImproperlyConfigured, match=f"LIMIT must be {expected}"):
            read("LIMIT", 1)
    monkeypatch.setenv("LIMIT", below_minimum)
    with pytest.raises(ImproperlyConfigured, match=">= 1"):
        read("LIMIT", 10, minimum=1)
    monkeypatch.setenv("LIMIT", good)
    assert read("LIMIT", 10) == value


def test_env_list_splits_on_commas(monkeypatch):
    monkeypatch.setenv("HOSTS", " a.example , b.example,, ")
    assert env_list("HOSTS", []) == ["a.example", "b.example"]


def test_env_choice_rejects_unknown_backend(monkeypatch):
    monkeypatch.setenv("STORAGE_BACKEND", "ftp")
    with pytest.raises(ImproperlyConfigured, match="STORAGE_BACKEND"):
        env_choice("STORAGE_BACKEND", "local", ("local", "s3"))


def _import_settings(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_python(
        "-c",
        "import portal.settings as s; print(s.STORAGES['default']['BACKEND'])",
        env=env,
        drop=("SECRET_KEY", "DEBUG"),
    )


def test_secret_key_is_required_outside_debug():
    result = _import_settings({"DEBUG": "false"})
    assert result.returncode != 0
    assert "SECRET_KEY is required" in result.stderr


def test_s3_backend_needs_a_bucket_and_uses_django_storages():
    result = _import_settings({"DEBUG": "true", "STORAGE_BACKEND": "s3"})
    assert "AWS_STORAGE_BUCKET_NAME is required" in result.stderr
    result = _import_settings(
        {"DEBUG": "true", "STORAGE_BACKEND": "s3", "AWS_STORAGE_BUCKET_NAME": "scans"}
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "portal.storage.PrivateS3Storage"


def test_time_limits_sit_below_the_visibility_timeout(settings):
    assert settings.CELERY_TASK_SOFT_TIME_LIMIT < settings.CELERY_TASK_TIME_LIMIT
    assert (
        settings.CELERY_TASK_TIME_LIMIT
        < settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]
    )

"""Shared test set-up: settings defaults for tests, a temporary MEDIA_ROOT, users."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest

# Read by pytest-django when it configures Django (in pytest_configure, after this file).
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
os.environ.setdefault("SECRET_KEY", "test-only-secret-key-not-for-production")

from django.conf import settings as django_settings

# Touching a setting loads them, which tells pytest-django to call django.setup().
django_settings.INSTALLED_APPS  # noqa: B018

TEST_MODEL_VERSION = "test-model-1"
# Eight real ultrasound scans kept with the tests (source, citation and CC BY 4.0 licence
# in its README), so the end-to-end tests run on any machine, no dataset needed.
SCANS_DIR = Path(__file__).resolve().parent / "fixtures" / "scans"


@pytest.fixture
def media_root(settings: Any, tmp_path: Path) -> Path:
    """A fresh local storage per test (never var/media)."""
    root = tmp_path / "media"
    root.mkdir()
    settings.MEDIA_ROOT = root
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(root)},
        },
    }
    return root


def write_model_json(
    directory: Path, version: str = TEST_MODEL_VERSION, **fields: Any
) -> Path:
    """A model.json as ml.weights_io writes it (no weights beside it)."""
    from ml.weights_io import placeholder_meta, write_meta

    return write_meta(directory, placeholder_meta(version, **fields))


@pytest.fixture
def weights_dir(settings: Any, tmp_path: Path) -> Path:
    """A weights directory whose model.json names TEST_MODEL_VERSION (no real weights)."""
    directory = tmp_path / "weights"
    directory.mkdir()
    write_model_json(directory)
    settings.ML_WEIGHTS_DIR = directory
    return directory


def png_bytes(width: int = 64, height: int = 48, *, mode: str = "L") -> bytes:
    from PIL import Image

    image = Image.new(
        mode, (width, height), color=128 if mode == "L" else (120, 130, 140)
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def make_png():
    return png_bytes


@pytest.fixture
def user(django_user_model: Any) -> Any:
    """A member of the staff role (registers patients, uploads, follows analyses)."""
    from portal.accounts.roles import STAFF, assign_role

    user = django_user_model.objects.create_user(
        username="sonographer", password="pw-123456!"
    )
    assign_role(user, STAFF)
    return user


@pytest.fixture
def make_user(django_user_model: Any):
    """make_user("radiologist") -> a user in that role (None: no role at all)."""
    from portal.accounts.roles import assign_role

    def make(role: str | None, username: str | None = None) -> Any:
        user = django_user_model.objects.create_user(
            username=username or f"{role or 'nobody'}-user",
            password="a-long-test-password-1",
        )
        if role:
            assign_role(user, role)
        return user

    return make


@pytest.fixture
def staff_user(django_user_model: Any) -> Any:
    return django_user_model.objects.create_superuser(
        username="admin", password="pw-123456!", email="admin@example.org"
    )


@pytest.fixture
def logged_in_client(client: Any, user: Any) -> Any:
    client.force_login(user)
    return client


@pytest.fixture
def enqueued(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, Any]]:
    """Analysis ids sent to the queue, recorded instead of reaching a broker.

    Autouse in the portal and worker unit tests; the e2e tests send real messages.
    """
    sent: list[tuple[int, Any]] = []

    def record(analysis_id: int, *, countdown: float | None = None) -> None:
        sent.append((analysis_id, countdown))

    monkeypatch.setattr("portal.analyses.queue.send_analysis", record)
    return sent


@pytest.fixture
def patient(db: None) -> Any:
    from portal.clinical.services import patient_create

    return patient_create(identifier="H-0001", name="Jane Example")


@pytest.fixture
def study(patient: Any, user: Any) -> Any:
    from portal.clinical.services import study_create

    return study_create(patient=patient, created_by=user, accession_number="ACC1")

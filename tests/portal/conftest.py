from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from bench.launch import REPO_ROOT, child_env


@pytest.fixture(autouse=True)
def _isolated(
    media_root: Path, weights_dir: Path, enqueued: list[tuple[int, Any]]
) -> None:
    """Every portal test gets its own storage, a model.json, and no broker."""


def assert_idle_session_ends(client: Any, settings: Any) -> None:
    """A signed-in client idle past SESSION_IDLE_TIMEOUT is sent to the login page."""
    import time

    from django.urls import reverse

    from portal.security import LAST_ACTIVITY_KEY

    session = client.session
    session[LAST_ACTIVITY_KEY] = time.time() - settings.SESSION_IDLE_TIMEOUT - 5
    session.save()

    response = client.get(reverse("clinical:patient_list"))

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def run_python(
    *args: str,
    env: Mapping[str, str],
    drop: tuple[str, ...] = (),
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """`python args` in the repository, in a process of its own: this environment less
    the variables starting with one of `drop`, with `env` on top. Never raises on a
    failure: the test reads returncode, stdout and stderr."""
    return subprocess.run(
        [sys.executable, *args],
        check=False,
        cwd=REPO_ROOT,
        env=child_env(env, drop=drop),
        capture_output=True,
        text=True,
        timeout=timeout,
    )

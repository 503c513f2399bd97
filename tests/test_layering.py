"""The import contracts in .importlinter hold: bench -> workers -> portal -> ml, one way,
and the portal's apps in layers (pages and API on top, audit and accounts at the bottom).

The same check as `make lint`, here so that `make test` (and CI) fail on a new cycle, on
an app importing one above it, or on the portal importing TensorFlow.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lint_imports() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_import_contracts_are_kept(lint_imports):
    done = lint_imports
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_the_portal_layers_are_among_the_contracts_checked(lint_imports):
    # Dropping a contract would keep "0 broken" true: these two must be there.
    out = lint_imports.stdout
    assert "Portal apps in layers: a module imports only from the layers below" in out
    assert "No two portal apps import each other KEPT" in out

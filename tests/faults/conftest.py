"""Fault tests: real workers, Redis and databases, with parts of them failing.

The quick ones run in `make test`; those marked `long_fault` (a PostgreSQL restart, a
second Redis outage) only with RUN_LONG_FAULTS=1, which `make faults` sets. Workers run a
tiny untrained network built once (same code as the real model, 64-pixel input), so
these tests need neither trained weights nor much CPU; a result's label is meaningless,
its path through the system is the real one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import REPO_ROOT, PrivatePostgres, PrivateRedis, Stack

# Short limits so that lost work is noticed in seconds, not the production minutes.
FAULT_SETTINGS = {
    "ANALYSIS_TIME_LIMIT": "30",
    "ANALYSIS_HEARTBEAT_SECONDS": "3",
    "ANALYSIS_STALE_RUNNING_SECONDS": "12",
    "ANALYSIS_STALE_QUEUED_SECONDS": "6",
    "RECONCILE_INTERVAL": "2",
    "ANALYSIS_BATCH_SIZE": "2",
    "ANALYSIS_MAX_ATTEMPTS": "3",
    "ANALYSIS_RENDER_THREADS": "1",
}
TINY_MODEL_SOURCES = (
    "ml/model.py",
    "ml/backbone.py",
    "ml/weights_io.py",
    "ml/config.py",
)
BUILD_TINY_MODEL = """
import sys
from ml.config import CLASSES
from ml.model import build_busnet
from ml.weights_io import ModelMeta, save
save(build_busnet(64), sys.argv[1],
     ModelMeta(name="fault-tiny", version="", image_size=64, classes=list(CLASSES)))
"""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "long_fault: a slow fault test, run by `make faults` (RUN_LONG_FAULTS=1)",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.environ.get("RUN_LONG_FAULTS") == "1":
        return
    skip = pytest.mark.skip(
        reason="long fault test: run `make faults` (RUN_LONG_FAULTS=1)"
    )
    for item in items:
        if "long_fault" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_weights() -> Path:
    """An untrained BUSNet at 64 px, built once and cached under var/ by source hash."""
    digest = hashlib.sha256()
    for source in TINY_MODEL_SOURCES:
        digest.update((REPO_ROOT / source).read_bytes())
    directory = (
        REPO_ROOT / "var" / "test-cache" / f"fault-model-{digest.hexdigest()[:12]}"
    )
    if not (directory / "model.json").is_file():
        directory.parent.mkdir(parents=True, exist_ok=True)
        # Built aside and renamed: a concurrent run in the same checkout sees all or none.
        partial = directory.with_name(f"{directory.name}.{os.getpid()}.partial")
        subprocess.run(
            [sys.executable, "-c", BUILD_TINY_MODEL, str(partial)],
            cwd=REPO_ROOT,
            check=True,
            capture_output=True,
            timeout=600,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        try:
            partial.rename(directory)
        except OSError:  # another run got there first; its model is the same
            shutil.rmtree(partial, ignore_errors=True)
    return directory


@pytest.fixture
def make_stack(tmp_path: Path, tiny_weights: Path) -> Iterator[Any]:
    """make_stack(database="sqlite"|"postgres", **settings) -> a migrated, empty Stack."""
    stacks: list[Stack] = []
    clusters: list[PrivatePostgres] = []

    def make(database: str = "sqlite", **settings: str) -> Stack:
        root = tmp_path / f"stack{len(stacks)}"
        root.mkdir()
        redis = PrivateRedis(root / "redis")
        redis.start()
        if database == "postgres":
            try:
                cluster = PrivatePostgres()
                clusters.append(cluster)
                cluster.init()
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                redis.stop()
                pytest.skip(f"cannot run a private PostgreSQL here: {exc}")
            url = cluster.url
        else:
            cluster = None
            url = f"sqlite:///{root / 'portal.sqlite3'}"
        stack = Stack(
            root=root,
            database_url=url,
            redis=redis,
            weights_dir=tiny_weights,
            settings_env={**FAULT_SETTINGS, **settings},
            postgres=cluster,
        )
        stacks.append(stack)
        stack.driver("migrate", timeout=300)
        return stack

    yield make
    for stack in stacks:
        stack.close()
    for cluster in clusters:
        cluster.close()

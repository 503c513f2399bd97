"""Start a real `celery -A workers worker` process pointed at a given database and broker.

Used by the benchmarks, the end-to-end and fault tests and `make run`, which all need
the production worker's command line, most of them with a worker that sees the same
database (a test database, a benchmark database) as the calling process. The other
processes they start (the DICOM listener, gunicorn, servers of their own) are started,
awaited and stopped with the helpers here too.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit, urlunsplit

from django.conf import settings

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent


# Runs first in the child: SIGTERM it when the process that started it dies, then become
# the worker (the signal survives exec). A test run killed by a timeout must not leave a
# worker behind that keeps consuming with that run's settings. A no-op outside Linux.
_EXEC_WITH_PARENT_DEATH_SIGNAL = """
import ctypes, os, signal, sys
try:
    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
os.execv(sys.argv[1], sys.argv[1:])
"""


def free_port() -> int:
    """A loopback TCP port free at the time of asking."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def database_url(settings_dict: Mapping[str, Any]) -> str:
    """A DATABASE_URL for the database a connection is using right now."""
    engine = settings_dict["ENGINE"]
    name = str(settings_dict["NAME"])
    if engine.endswith("sqlite3"):
        if name == ":memory:" or name.startswith("file:"):
            raise ValueError(
                "an in-memory SQLite database cannot be shared with a worker"
            )
        return f"sqlite:///{Path(name).resolve()}"
    if "postgresql" in engine:
        user = quote(str(settings_dict.get("USER") or ""), safe="")
        password = quote(str(settings_dict.get("PASSWORD") or ""), safe="")
        credentials = (
            f"{user}:{password}@" if password else (f"{user}@" if user else "")
        )
        host = settings_dict.get("HOST") or "127.0.0.1"
        port = f":{settings_dict['PORT']}" if settings_dict.get("PORT") else ""
        return f"postgres://{credentials}{host}{port}/{quote(name, safe='')}"
    raise ValueError(f"no DATABASE_URL form for engine {engine}")


def child_env(
    values: Mapping[str, str], *, drop: tuple[str, ...] = ()
) -> dict[str, str]:
    """This process's environment for a child: less every variable whose name starts
    with one of `drop` (settings the child must not inherit), with `values` on top."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(values)
    return env


class Scratch(NamedTuple):
    broker: str
    client: Any  # redis.Redis
    queue: str
    folder: Path


@contextmanager
def bench_scratch(name: str, redis_db: int) -> Iterator[Scratch]:
    """A folder and a queue of this run's own, on a Redis database of the benchmark's:
    runs side by side never count each other's messages. Both are removed at the end.

    Fails loudly without Redis (start one with `make redis`).
    """
    import redis

    broker = redis_url_with_db(settings.REDIS_URL, redis_db)
    client = redis.Redis.from_url(broker)
    client.ping()
    queue = f"inference-bench-{name}-{secrets.token_hex(6)}"
    try:
        with tempfile.TemporaryDirectory(
            prefix=f"bench-{name}-", ignore_cleanup_errors=True
        ) as folder:
            yield Scratch(broker, client, queue, Path(folder))
    finally:
        client.delete(queue)
        client.close()


def point_celery_at(url: str) -> None:
    """Send this process's tasks to another broker URL from now on.

    Celery and kombu cache connection and producer pools per URL; dropping the app's
    references makes the next send look up the pool for the new URL. The old pools are
    left open: kombu shares them process-wide, and closing one breaks its next user.
    """
    from portal.analyses.queue import app

    app.conf.broker_url = url
    app._pool = None
    app.amqp._producer_pool = None


def redis_url_with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(
        (parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment)
    )


def worker_command(queues: str | None, node_name: str) -> list[str]:
    """The production worker's command line (README, compose), named for tests and benches.

    queues None: a plain worker, which consumes every queue the settings declare; a
    comma-separated list: a worker for those queues only (`-Q inference`: analyses only).
    """
    selection = ["-Q", queues] if queues else []
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers",
        "worker",
        *selection,
        "--concurrency",
        "1",
        "--prefetch-multiplier",
        "1",
        "-l",
        "info",
        "-n",
        node_name,
        # Short-lived workers: no cluster chatter to wait for at start and stop.
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]


def start_worker(
    *,
    database: str,
    broker: str,
    media_root: Path,
    log_path: Path,
    extra_env: Mapping[str, str] | None = None,
    name: str = "worker",
    queues: Sequence[str] | None = None,
) -> subprocess.Popen[bytes]:
    """The same command as production, pointed at the given database and broker.

    queues None starts a plain worker (every declared queue), as the README does.
    """
    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "portal.settings",
            "DATABASE_URL": database,
            "REDIS_URL": broker,
            "MEDIA_ROOT": str(media_root),
            "ML_WEIGHTS_DIR": str(settings.ML_WEIGHTS_DIR),
            "CELERY_INFERENCE_QUEUE": settings.CELERY_INFERENCE_QUEUE,
            "CELERY_SHADOW_QUEUE": settings.CELERY_SHADOW_QUEUE,
            "SECRET_KEY": settings.SECRET_KEY,
            "STORAGE_BACKEND": "local",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra_env or {})
    command = [
        sys.executable,
        "-c",
        _EXEC_WITH_PARENT_DEATH_SIGNAL,
        *worker_command(
            ",".join(queues) if queues else None, f"{name}-{os.getpid()}@%h"
        ),
    ]
    log = open(log_path, "wb")  # noqa: SIM115 - closed by the child's exit, kept for stop_worker
    logger.info("starting worker: %s", " ".join(command))
    return subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_until_ready(
    process: subprocess.Popen[bytes],
    log_path: Path,
    timeout: float,
    *,
    line: bytes = b" ready.",
    what: str = "worker",
) -> None:
    """Wait for the line a process logs once it serves: a worker's "ready" by default
    (the model loads in the child before that)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{what} exited with {process.returncode}:\n{tail(log_path)}"
            )
        if line in log_path.read_bytes():
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s:\n{tail(log_path)}")


def start_listener(
    env: Mapping[str, str], log_path: Path, timeout: float = 240
) -> subprocess.Popen[bytes]:
    """`manage.py dicom_listener` as deployed, with env as its whole environment;
    returns once it listens, or stops it and raises."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "dicom_listener"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_ready(
            process, log_path, timeout, line=b"listening on", what="DICOM listener"
        )
    except (RuntimeError, TimeoutError):
        stop_process(process)
        raise
    return process


def stop_process(
    process: subprocess.Popen[Any], timeout: float = 30, *, group: bool = False
) -> None:
    """SIGTERM, then SIGKILL if it is still running after timeout seconds.

    group: the process leads a process group of its own (start_new_session=True), and
    the SIGKILL goes to the whole group, so that no child (a Celery pool process)
    outlives it. SIGTERM goes to the leader alone, which stops its children itself.
    """
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        if group:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
        process.wait(timeout=10)


def stop_worker(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    stop_process(process, timeout, group=True)


def run_checked(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
    what: str | None = None,
) -> str:
    """Run a command to its end and return its standard output; a failure raises
    RuntimeError with the end of its standard error."""
    done = subprocess.run(
        list(command),
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{what or command[0]} failed:\n{done.stderr.strip()[-4000:]}"
        )
    return done.stdout


def tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def signed_in_session(base: str, username: str, password: str) -> Any:
    """A requests session signed in through the portal's login page, as a browser is."""
    import requests

    session = requests.Session()
    session.get(f"{base}/accounts/login/", timeout=30).raise_for_status()
    response = session.post(
        f"{base}/accounts/login/",
        data={
            "username": username,
            "password": password,
            "csrfmiddlewaretoken": session.cookies["csrftoken"],
        },
        headers={"Referer": f"{base}/accounts/login/"},
        timeout=30,
    )
    response.raise_for_status()
    if "sessionid" not in session.cookies:
        raise RuntimeError(f"{username} could not sign in")
    return session

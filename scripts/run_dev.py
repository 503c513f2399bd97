#!/usr/bin/env python3
"""Run the portal and one Celery worker side by side until Ctrl-C, then stop both.

Used by `make run`, after the database is migrated and Redis answers. The worker is the
production command line (bench/launch.py) and runs the reconciler itself, so a lost
message or a killed worker is recovered here as in production, with no beat. Each child
runs in its own process group so that stopping it also stops what it spawned
(runserver's autoreloader, Celery's pool). If either exits on its own, the other is stopped too and
the exit status says so.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.launch import worker_command

STOP_GRACE_S = 15.0


def start(name: str, command: list[str]) -> subprocess.Popen:
    print(f"run_dev: starting {name}: {' '.join(command)}", flush=True)
    return subprocess.Popen(command, cwd=REPO_ROOT, start_new_session=True)


def stop_all(children: dict[str, subprocess.Popen]) -> None:
    running = {name: child for name, child in children.items() if child.poll() is None}
    for child in running.values():
        _signal_group(child, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for name, child in running.items():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(
                f"run_dev: {name} did not stop in {STOP_GRACE_S:.0f}s; killing it",
                flush=True,
            )
            _signal_group(child, signal.SIGKILL)
            child.wait()
        # Reap what the child left in its group (runserver's reloaded child, pool processes).
        _signal_group(child, signal.SIGKILL)


def _signal_group(child: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(child.pid, signum)
    except ProcessLookupError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)

    children = {
        # No -Q: the settings declare the queues, so a plain worker takes all of them
        # (the shadow model's runs at the lowest priority: after any analysis waiting).
        "worker": start("worker", worker_command(None, "worker@%h")),
        "portal": start(
            "portal",
            [sys.executable, "manage.py", "runserver", f"{args.host}:{args.port}"],
        ),
    }

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    # Set SIGINT explicitly too: a shell that starts us in the background ignores it.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(
        f"\n  Portal: http://{args.host}:{args.port}/   (Ctrl-C stops portal and worker)\n",
        flush=True,
    )
    try:
        while True:
            for name, child in children.items():
                code = child.poll()
                if code is not None:
                    print(
                        f"run_dev: {name} exited with status {code}; stopping the rest",
                        flush=True,
                    )
                    stop_all(children)
                    return code or 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nrun_dev: stopping portal and worker", flush=True)
        stop_all(children)
        return 0


if __name__ == "__main__":
    sys.exit(main())

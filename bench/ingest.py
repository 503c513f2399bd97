"""Ingestion benchmark: one zip of N real BUSI images POSTed to a real web process.

The web process is gunicorn serving the portal (one sync worker, as in production) on a
fresh SQLite database (or --database-url), with a real Redis as the broker. The clock
runs from the start of the POST to the response, which comes once every image is
stored, its analysis committed and its message sent. Memory is the web process's own:
its peak resident set size (VmHWM) during the upload minus its resident size just
before it, after a warm-up upload that loads every module the upload path needs.

Each image gets a unique PNG text chunk, so a run never finds its images already in the
database: every one is decoded, stored and enqueued.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests
from django.conf import settings
from django.test.utils import override_settings

from bench.launch import (
    REPO_ROOT,
    bench_scratch,
    run_checked,
    start_worker,
    stop_process,
    stop_worker,
    tail,
    wait_until_ready,
)
from ml.weights_io import placeholder_meta, write_meta

logger = logging.getLogger(__name__)

BENCH_REDIS_DB = 13
CLASS_DIRS = ("benign", "malignant", "normal")
TARGET_SECONDS = 15.0
TARGET_MEMORY_MB = 100.0


@dataclass
class IngestBenchResult:
    n: int
    zip_mb: float
    seconds: float
    accepted: int
    rejected: int
    enqueued: int
    rss_before_mb: float
    rss_peak_mb: float
    analysed_seconds: float | None = None
    analysed: int | None = None

    @property
    def memory_growth_mb(self) -> float:
        return self.rss_peak_mb - self.rss_before_mb


def busi_scans(busi_dir: Path, n: int) -> list[Path]:
    per_class = [
        sorted(p for p in (busi_dir / c).glob("*.png") if "_mask" not in p.name)
        for c in CLASS_DIRS
    ]
    interleaved = [p for group in zip(*per_class, strict=False) for p in group]
    leftovers = [p for group in per_class for p in group if p not in set(interleaved)]
    pool = interleaved + leftovers
    if not pool:
        raise FileNotFoundError(f"no BUSI images under {busi_dir}")
    return [pool[i % len(pool)] for i in range(n)]


def unique_png(content: bytes, nonce: str) -> bytes:
    """The same image with a tEXt chunk before IEND: same pixels, new sha256."""
    if not content.startswith(b"\x89PNG") or content[-12:-8] != b"\0\0\0\0":
        raise ValueError("not a PNG ending in IEND")
    body = b"tEXt" + b"bench\0" + nonce.encode()
    chunk = (
        (len(body) - 4).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")
    )
    return content[:-12] + chunk + content[-12:]


def build_zip(paths: list[Path], path: Path) -> None:
    run = secrets.token_hex(8)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for index, source in enumerate(paths):
            content = unique_png(source.read_bytes(), f"{run}-{index}")
            archive.writestr(f"bench/{source.parent.name}/{index:04}.png", content)


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(child) for child in text)
    return found


def _manage(env: dict[str, str], *args: str) -> str:
    return run_checked(
        [sys.executable, "manage.py", *args],
        env=env,
        cwd=REPO_ROOT,
        what=f"manage.py {' '.join(args)}",
    )


SETUP_USER = """
from django.contrib.auth import get_user_model
from portal.accounts.tokens import token_issue
from portal.accounts.roles import STAFF, assign_role
from portal.clinical.services import patient_create, study_create
user = get_user_model().objects.create_user(username="bench-ingest")
assign_role(user, STAFF)
patient = patient_create(identifier="BENCH-1", name="Benchmark")
study = study_create(patient=patient, created_by=user, description="ingest benchmark")
print(token_issue(user=user)[1], study.pk)
"""


def _portal_env(
    work: Path,
    broker: str,
    queue: str,
    database_url: str | None,
    *,
    need_model: bool = False,
) -> tuple[dict[str, str], str]:
    """The environment of a portal process of this run (its own media, database and
    queue), and its database URL."""
    weights = Path(settings.ML_WEIGHTS_DIR)
    if not (weights / "model.json").exists():
        if need_model:
            raise FileNotFoundError(f"--analyse needs a trained model in {weights}")
        weights = work / "weights"
        weights.mkdir()
        write_meta(weights, placeholder_meta("bench"))
    media = work / "media"
    media.mkdir()
    database = database_url or f"sqlite:///{work / 'bench.sqlite3'}"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(40),
        "DATABASE_URL": database,
        "REDIS_URL": broker,
        "MEDIA_ROOT": str(media),
        "ML_WEIGHTS_DIR": str(weights),
        "STORAGE_BACKEND": "local",
        "SECURE_COOKIES": "0",
        "LOG_LEVEL": "WARNING",
        "API_THROTTLE_UPLOADS": "1000/minute",
        "CELERY_INFERENCE_QUEUE": queue,
    }
    return env, database


def run(
    *,
    n: int,
    busi_dir: Path | None = None,
    database_url: str | None = None,
    analyse: bool = False,
    timeout: float = 3600,
    report: Callable[[str], None] = logger.info,
) -> IngestBenchResult:
    busi_dir = Path(busi_dir or settings.BUSI_DIR)
    paths = busi_scans(busi_dir, n)
    with bench_scratch("ingest", BENCH_REDIS_DB) as (broker, client, queue, work):
        server = worker = None
        try:
            zip_path = work / "upload.zip"
            build_zip(paths, zip_path)
            warm_path = work / "warm.zip"
            build_zip(busi_scans(busi_dir, 2), warm_path)
            zip_mb = zip_path.stat().st_size / 1024**2
            report(f"{n} BUSI images from {busi_dir} in one zip of {zip_mb:.1f} MB")

            env, database = _portal_env(
                work, broker, queue, database_url, need_model=analyse
            )
            media = Path(env["MEDIA_ROOT"])
            report("migrating a fresh database")
            _manage(env, "migrate", "--noinput")
            output = _manage(env, "shell", "--verbosity", "0", "-c", SETUP_USER)
            token, study_id = output.strip().splitlines()[-1].split()

            # A second a file: 5,000 files on a loaded 2-core machine outlast 600 s.
            request_timeout = max(600, n)
            port = 8000 + secrets.randbelow(1000) + 100
            server = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "portal.wsgi:application",
                    "--workers",
                    "1",
                    "--bind",
                    f"127.0.0.1:{port}",
                    "--timeout",
                    str(request_timeout),
                ],
                cwd=REPO_ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=open(work / "web.log", "wb"),  # noqa: SIM115 - closed with the process
            )
            base = f"http://127.0.0.1:{port}"
            headers = {"Authorization": f"Token {token}"}
            upload_url = f"{base}/api/v1/studies/{study_id}/scans/"
            deadline = time.monotonic() + 120
            while True:
                try:
                    if requests.get(f"{base}/healthz", timeout=5).status_code in (
                        200,
                        503,
                    ):
                        break
                # A first request on a loaded machine can take longer than 5 s: try again.
                except (requests.ConnectionError, requests.Timeout):
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"gunicorn did not start:\n{tail(work / 'web.log')}"
                    )
                time.sleep(0.3)
            (web_pid,) = _children(server.pid)

            with warm_path.open("rb") as handle:
                warm = requests.post(
                    upload_url, headers=headers, files={"files": handle}, timeout=600
                )
            if warm.status_code != 201:
                raise RuntimeError(
                    f"warm-up upload failed: {warm.status_code} {warm.text[:500]}"
                )
            client.delete(queue)
            rss_before = _rss_mb(web_pid)
            report(f"web process {web_pid}: {rss_before:.0f} MB resident; uploading")

            started = time.perf_counter()
            with zip_path.open("rb") as handle:
                response = requests.post(
                    upload_url,
                    headers=headers,
                    files={"files": ("bench.zip", handle, "application/zip")},
                    timeout=request_timeout,
                )
            seconds = time.perf_counter() - started
            rss_peak = _rss_mb(web_pid, "VmHWM")
            if response.status_code != 201:
                raise RuntimeError(
                    f"upload failed: {response.status_code} {response.text[:500]}"
                )
            body = response.json()
            result = IngestBenchResult(
                n=n,
                zip_mb=zip_mb,
                seconds=seconds,
                accepted=len(body["accepted"]),
                rejected=len(body["rejected"]),
                enqueued=int(client.llen(queue)),
                rss_before_mb=rss_before,
                rss_peak_mb=rss_peak,
            )

            if analyse:
                report("starting a worker to analyse them")
                log_path = work / "worker.log"
                with override_settings(CELERY_INFERENCE_QUEUE=queue):
                    worker = start_worker(
                        database=database,
                        broker=broker,
                        media_root=media,
                        log_path=log_path,
                    )
                wait_until_ready(worker, log_path, timeout=600)
                analysis_started = time.perf_counter()
                progress_url = body["progress_url"]
                while True:
                    progress = requests.get(
                        progress_url, headers=headers, timeout=60
                    ).json()
                    if progress["analysed"] + progress["failed"] >= result.accepted:
                        break
                    if time.perf_counter() - analysis_started > timeout:
                        raise TimeoutError(f"analyses not finished: {progress}")
                    time.sleep(1)
                result.analysed_seconds = time.perf_counter() - analysis_started
                result.analysed = progress["analysed"]
            return result
        finally:
            if worker is not None:
                stop_worker(worker)
            if server is not None:
                stop_process(server)


@dataclass
class ImportBenchResult:
    n: int
    seconds: float  # the whole command, its start-up included
    stored_seconds: float  # from the first scan stored to the last
    peak_rss_mb: float  # the command's peak resident set size
    imported: int  # messages in the queue
    summary: str  # the command's last line: accepted, duplicates, rejected
    rejections: list[str]  # the first few "rejected" lines

    @property
    def ms_per_file(self) -> float:
        """Time per file while importing: the start-up (seconds on a loaded machine)
        would otherwise make small imports look slow per file."""
        return self.stored_seconds / max(1, self.n - 1) * 1000


STORED_SPAN = """
from django.db.models import Max, Min
from portal.clinical.models import Scan
span = Scan.objects.aggregate(first=Min("uploaded_at"), last=Max("uploaded_at"))
print((span["last"] - span["first"]).total_seconds())
"""


def wait_measuring_peak(
    process: subprocess.Popen, *, every_s: float = 0.05
) -> tuple[int, float]:
    """Wait for `process`; its exit code and its own peak resident memory in MB.

    Read from its /proc status (VmHWM of its own address space) while it runs, not from
    wait4's rusage: Linux carries the forking process's high-water mark across exec
    into the child's ru_maxrss, so a child of a benchmark that had just POSTed a 665 MB
    zip "peaked" at the benchmark's 1.4 GB."""
    peak = 0.0
    while process.poll() is None:
        try:
            peak = max(peak, _rss_mb(process.pid, "VmHWM"))
        except (OSError, RuntimeError):
            pass  # exiting: its status has no memory lines any more
        time.sleep(every_s)
    return process.returncode, peak


def run_import(
    *,
    n: int,
    busi_dir: Path | None = None,
    database_url: str | None = None,
    report: Callable[[str], None] = logger.info,
) -> ImportBenchResult:
    """`manage.py import_scans` on one zip of N BUSI images into a fresh database: its
    wall time and its peak resident memory (its own, read while it runs)."""
    busi_dir = Path(busi_dir or settings.BUSI_DIR)
    with bench_scratch("import", BENCH_REDIS_DB) as (broker, client, queue, work):
        zip_path = work / "import.zip"
        build_zip(busi_scans(busi_dir, n), zip_path)
        env, _ = _portal_env(work, broker, queue, database_url)
        _manage(env, "migrate", "--noinput")
        output = _manage(env, "shell", "--verbosity", "0", "-c", SETUP_USER)
        _, study_id = output.strip().splitlines()[-1].split()
        report(
            f"import_scans: {n} images in one zip of {zip_path.stat().st_size / 1024**2:.1f} MB"
        )
        started = time.perf_counter()
        process = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "import_scans",
                str(zip_path),
                "--study",
                study_id,
                "--user",
                "bench-ingest",
                "--no-progress",
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=open(work / "import.out", "wb"),  # noqa: SIM115 - closed with the process
            stderr=open(work / "import.log", "wb"),  # noqa: SIM115 - closed with the process
        )
        returncode, peak_mb = wait_measuring_peak(process)
        seconds = time.perf_counter() - started
        if returncode != 0:
            raise RuntimeError(f"import_scans failed:\n{tail(work / 'import.log')}")
        span = _manage(env, "shell", "--verbosity", "0", "-c", STORED_SPAN)
        said = (work / "import.out").read_text().splitlines()
        return ImportBenchResult(
            summary=said[-1] if said else "",
            rejections=[line for line in said if line.startswith("rejected")][:3],
            n=n,
            seconds=seconds,
            stored_seconds=float(span.strip().splitlines()[-1]),
            peak_rss_mb=peak_mb,
            imported=int(client.llen(queue)),
        )


SCALE_TIME_GROWTH = 0.20  # per-file time at the largest size within 20% of the smallest
SCALE_MEMORY_MB = 100.0  # peak memory at the largest size within 100 MB of the smallest


def scale(
    *,
    sizes: list[int],
    busi_dir: Path | None = None,
    database_url: str | None = None,
    report: Callable[[str], None] = logger.info,
) -> list[str]:
    """Both ways in (the API's zip upload, import_scans) at each size: time per file and
    peak memory, and whether they stay flat from the smallest size to the largest."""
    rows: list[tuple[int, IngestBenchResult, ImportBenchResult]] = []
    for n in sizes:
        api = run(n=n, busi_dir=busi_dir, database_url=database_url, report=report)
        command = run_import(
            n=n, busi_dir=busi_dir, database_url=database_url, report=report
        )
        rows.append((n, api, command))
    lines = [
        (
            f"{'files':>6} {'API ms/file':>12} {'API peak MB':>12} {'API growth MB':>14} "
            f"{'import ms/file':>15} {'import peak MB':>15}  accepted / queued"
        )
    ]
    for n, api, command in rows:
        lines.append(
            f"{n:>6} {api.seconds / n * 1000:>12.1f} {api.rss_peak_mb:>12.0f} "
            f"{api.memory_growth_mb:>14.1f} {command.ms_per_file:>15.1f} "
            f"{command.peak_rss_mb:>15.0f}  API {api.accepted}/{api.enqueued}, "
            f"import {command.imported}"
        )
    for n, _, command in rows:
        lines.append(f"import_scans at {n}: {command.summary}")
        lines.extend(f"  {line}" for line in command.rejections)
    (small, api_s, cmd_s), (large, api_l, cmd_l) = rows[0], rows[-1]
    for what, t_small, t_large, m_small, m_large in (
        (
            "API",
            api_s.seconds / small,
            api_l.seconds / large,
            api_s.rss_peak_mb,
            api_l.rss_peak_mb,
        ),
        (
            "import_scans",
            cmd_s.ms_per_file,
            cmd_l.ms_per_file,
            cmd_s.peak_rss_mb,
            cmd_l.peak_rss_mb,
        ),
    ):
        growth = t_large / t_small - 1
        memory = m_large - m_small
        time_ok = growth <= SCALE_TIME_GROWTH
        memory_ok = memory <= SCALE_MEMORY_MB
        lines.append(
            f"{what}: per-file time at {large} is {growth:+.1%} of that at {small} "
            f"(target within {SCALE_TIME_GROWTH:.0%}: {'met' if time_ok else 'NOT met'}); "
            f"peak memory {memory:+.0f} MB (target within {SCALE_MEMORY_MB:.0f} MB: "
            f"{'met' if memory_ok else 'NOT met'})"
        )
    lines.append(
        "load average at the end: "
        + " ".join(f"{v:.2f}" for v in os.getloadavg())
        + " (1, 5, 15 min); API ms/file: the POST's whole time; import ms/file: first "
        "scan stored to last (the command's start-up left out)"
    )
    return lines


def summary(r: IngestBenchResult) -> list[str]:
    time_ok = r.seconds < TARGET_SECONDS
    memory_ok = r.memory_growth_mb < TARGET_MEMORY_MB
    lines = [
        f"images: {r.n} in one zip of {r.zip_mb:.1f} MB",
        (
            f"accepted {r.accepted}, rejected {r.rejected}, messages in the queue "
            f"{r.enqueued}"
        ),
        (
            f"accepted and enqueued in {r.seconds:.1f} s ({r.n / r.seconds:.1f} images/s; "
            f"target < {TARGET_SECONDS:.0f} s: {'met' if time_ok else 'NOT met'})"
        ),
        (
            f"web process memory: {r.rss_before_mb:.0f} MB before, peak "
            f"{r.rss_peak_mb:.0f} MB, growth {r.memory_growth_mb:.1f} MB (target < "
            f"{TARGET_MEMORY_MB:.0f} MB: {'met' if memory_ok else 'NOT met'})"
        ),
    ]
    if r.analysed_seconds is not None:
        lines.append(
            f"analysed {r.analysed} in {r.analysed_seconds:.1f} s after the upload "
            f"({(r.analysed or 0) / r.analysed_seconds:.2f} images/s, one worker)"
        )
    return lines

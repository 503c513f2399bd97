"""Load benchmark: queue many analyses, keep real workers busy, and measure what users
and operators see meanwhile.

In a throwaway test database (created and dropped here, never the configured one) it
seeds `studies` studies with one analysed scan each, uploads `analyses` new scans through
the portal's services (spread over studies of 20), and starts `workers` real
`celery -A workers worker` processes and a gunicorn web server on loopback. While the
workers drain the queue it requests the dashboard and study pages as a signed-in user
and samples the resident memory of every worker's pool process. Reports throughput,
page latency percentiles and memory over time.
"""

from __future__ import annotations

import io
import logging
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.db import connection, connections
from django.db.models import Max, Min
from django.test.utils import override_settings
from PIL import Image

from bench.launch import (
    REPO_ROOT,
    database_url,
    point_celery_at,
    redis_url_with_db,
    signed_in_session,
    start_worker,
    stop_worker,
    tail,
    wait_until_ready,
)

logger = logging.getLogger(__name__)

BENCH_REDIS_DB = 11
SCANS_PER_STUDY = 20
PASSWORD = "load-bench-password-7391"


@dataclass
class MemorySample:
    seconds: float
    finished: int
    rss_mb: list[float]


@dataclass
class LoadResult:
    analyses: int
    studies: int
    workers: int
    model_version: str
    warmup: int = 300
    enqueue_seconds: float = 0.0
    drain_seconds: float = 0.0
    worker_span_seconds: float = 0.0
    failed: int = 0
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    memory: list[MemorySample] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return self.analyses / self.drain_seconds if self.drain_seconds else 0.0

    def percentile(self, page: str, q: float) -> float:
        values = sorted(self.latencies_ms.get(page, []))
        if not values:
            return float("nan")
        return values[min(len(values) - 1, round(q * (len(values) - 1)))]

    def memory_growth(self) -> tuple[float, float, float] | None:
        """(RSS after warm-up, RSS at the end, growth) of the largest worker process.

        Warm-up: the first `warmup` analyses (model loaded, every batch shape traced,
        thread pools and allocator arenas filled).
        """
        warm_at = max(1, min(self.warmup, self.analyses - 1))
        warm = [s for s in self.memory if s.finished >= warm_at and s.rss_mb]
        if len(warm) < 2:
            return None
        first, last = max(warm[0].rss_mb), max(warm[-1].rss_mb)
        return first, last, (last - first) / first


def blob_png(rng: np.random.Generator, size: int) -> bytes:
    """A synthetic grey scan: a bright blob at a random place over noise."""
    y, x = np.mgrid[0:size, 0:size]
    cx, cy = rng.uniform(0.3, 0.7, 2) * size
    blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (size * rng.uniform(4, 12)))
    pixels = (30 + 180 * blob + rng.normal(0, 10, blob.shape)).clip(0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _seed(studies: int, model_version: str, user: Any) -> None:
    """`studies` studies (4 per patient), each with one scan analysed long ago."""
    from django.utils import timezone

    from portal.analyses.models import Analysis
    from portal.clinical.models import Patient, Scan, Study

    now = timezone.now()
    patients = Patient.objects.bulk_create(
        Patient(identifier=f"LOAD-{i:06d}", name=f"Load Patient {i}")
        for i in range((studies + 3) // 4)
    )
    made = Study.objects.bulk_create(
        Study(
            patient=patients[i // 4],
            created_by=user,
            accession_number=f"LA{i:07d}",
            description="load benchmark history",
        )
        for i in range(studies)
    )
    scans = Scan.objects.bulk_create(
        Scan(
            study=study,
            original=f"scans/{study.pk}/seed-{study.pk}.png",
            original_filename="seed.png",
            sha256=f"{study.pk:064d}",
            width=256,
            height=256,
            format="PNG",
            uploaded_by=user,
        )
        for study in made
    )
    rng = random.Random(1)
    labels = ("normal", "benign", "malignant")
    Analysis.objects.bulk_create(
        Analysis(
            scan=scan,
            model_version=model_version,
            status=Analysis.Status.SUCCEEDED,
            attempts=1,
            queued_at=now,
            started_at=now,
            finished_at=now,
            label=(label := rng.choice(labels)),
            confidence=0.8,
            probabilities={name: (0.8 if name == label else 0.1) for name in labels},
            lesion_area_fraction=0.1,
        )
        for scan in scans
    )
    # What the workers' analysis_record_success would have kept: the worklist columns.
    from bench.pages import analyze_after_bulk_load
    from portal.review.services import studies_review_refresh

    analyze_after_bulk_load()
    studies_review_refresh(
        studies=Study.objects.filter(accession_number__startswith="LA")
    )


def _upload(
    count: int,
    model_version: str,
    user: Any,
    size: int,
    ids: list[int],
    study_ids: list[int],
) -> None:
    """Upload `count` scans; ids are appended as they go (the sampler reads them)."""
    from portal.analyses.modelinfo import model_input_side
    from portal.analyses.services import scan_submit
    from portal.clinical.models import Patient
    from portal.clinical.services import study_create
    from portal.clinical.uploads import validate_content

    rng = np.random.default_rng(7)
    # As ingestion stores them: with the model input the worker reads.
    side = model_input_side(model_version=model_version)
    patient = Patient.objects.create(identifier="LOAD-UPLOADS", name="Load Uploads")
    study = None
    for index in range(count):
        if index % SCANS_PER_STUDY == 0:
            study = study_create(patient=patient, created_by=user)
            study_ids.append(study.pk)
        upload = validate_content(
            filename=f"load-{index}.png",
            content=blob_png(rng, size),
            model_input_side=side,
        )
        scan = scan_submit(
            study=study, upload=upload, uploaded_by=user, model_version=model_version
        )
        ids.append(scan.analyses.values_list("pk", flat=True).get())


class _Sampler(threading.Thread):
    """Every `interval` s: finished analyses and the RSS of every worker process."""

    def __init__(self, pids: Callable[[], list[int]], ids: list[int], interval: float):
        super().__init__(daemon=True)
        self.pids, self.ids, self.interval = pids, ids, interval
        self.samples: list[MemorySample] = []
        self.stop = threading.Event()
        self.started = time.monotonic()

    def run(self) -> None:
        import psutil
        from django.db import connection as thread_connection

        from portal.analyses.models import Analysis

        try:
            while not self.stop.wait(self.interval):
                finished = Analysis.objects.filter(
                    pk__in=self.ids, status__in=("succeeded", "failed")
                ).count()
                rss = []
                for pid in self.pids():
                    try:
                        rss.append(psutil.Process(pid).memory_info().rss / 2**20)
                    except psutil.Error:
                        continue
                self.samples.append(
                    MemorySample(time.monotonic() - self.started, finished, rss)
                )
        finally:
            thread_connection.close()


def _pool_pids(workers: list[subprocess.Popen[bytes]]) -> list[int]:
    """The processes that run tasks: each worker's pool children (or itself)."""
    import psutil

    pids = []
    for worker in workers:
        try:
            children = psutil.Process(worker.pid).children(recursive=True)
        except psutil.Error:
            continue
        pids.extend(child.pid for child in children) if children else pids.append(
            worker.pid
        )
    return pids


def _start_web(
    port: int, env: dict[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    log = open(log_path, "wb")  # noqa: SIM115 - the child owns it
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "portal.wsgi:application",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "--access-logfile",
            "-",
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _login(base: str) -> Any:
    return signed_in_session(base, "load-bench", PASSWORD)


def _measure_pages(
    base: str,
    pages: dict[str, Callable[[], str]],
    result: LoadResult,
    keep_going: Callable[[], bool],
    max_requests: int,
) -> None:
    session = _login(base)
    for _ in range(max_requests):
        if not keep_going():
            return
        for name, path in pages.items():
            started = time.perf_counter()
            try:
                response = session.get(f"{base}{path()}", timeout=60)
                ok = response.status_code == 200
            except Exception:  # noqa: BLE001 - counted, the benchmark goes on
                ok = False
            elapsed = (time.perf_counter() - started) * 1000
            if ok:
                result.latencies_ms.setdefault(name, []).append(elapsed)
            else:
                result.errors[name] = result.errors.get(name, 0) + 1


def _warm_up(base: str, pages: dict[str, Callable[[], str]]) -> None:
    """Untimed rounds: gunicorn's workers import the app on their first requests."""
    session = _login(base)
    for _ in range(2):
        for path in pages.values():
            session.get(f"{base}{path()}", timeout=120)


def run(
    *,
    analyses: int,
    studies: int,
    workers: int,
    image_size: int,
    page_requests: int,
    timeout: float,
    weights_dir: Path | None,
    report: Callable[[str], None],
    warmup: int = 300,
) -> LoadResult:
    from django.contrib.auth import get_user_model

    from portal.analyses.modelinfo import current_model_version
    from portal.analyses.models import Analysis

    weights = Path(weights_dir or settings.ML_WEIGHTS_DIR)
    work_dir = Path(tempfile.mkdtemp(prefix="bench-load-"))
    media_root = work_dir / "media"
    media_root.mkdir()
    old_name = connection.settings_dict["NAME"]
    report("creating a throwaway database (migrations)")
    connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    broker = redis_url_with_db(settings.REDIS_URL, BENCH_REDIS_DB)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with override_settings(
            ML_WEIGHTS_DIR=weights,
            MEDIA_ROOT=media_root,
            CELERY_BROKER_URL=broker,
            STORAGES={
                **settings.STORAGES,
                "default": {
                    "BACKEND": "django.core.files.storage.FileSystemStorage",
                    "OPTIONS": {"location": str(media_root)},
                },
            },
        ):
            return _run(
                LoadResult(
                    analyses,
                    studies,
                    workers,
                    current_model_version(weights),
                    warmup=warmup,
                ),
                image_size=image_size,
                page_requests=page_requests,
                timeout=timeout,
                weights=weights,
                work_dir=work_dir,
                media_root=media_root,
                broker=broker,
                processes=processes,
                report=report,
                user_model=get_user_model(),
                analysis_model=Analysis,
            )
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        connections.close_all()
        try:
            _end_other_sessions()
            connection.creation.destroy_test_db(old_name, verbosity=0)
        except Exception:
            logger.warning("could not drop the benchmark database", exc_info=True)
        shutil.rmtree(work_dir, ignore_errors=True)


def _run(
    result: LoadResult,
    *,
    image_size: int,
    page_requests: int,
    timeout: float,
    weights: Path,
    work_dir: Path,
    media_root: Path,
    broker: str,
    processes: list[subprocess.Popen[bytes]],
    report: Callable[[str], None],
    user_model: Any,
    analysis_model: Any,
) -> LoadResult:
    """Fill in result, which says what to run (analyses, studies, workers, model)."""
    import redis

    analyses, studies, workers = result.analyses, result.studies, result.workers
    model_version = result.model_version
    redis.Redis.from_url(broker).flushdb()
    point_celery_at(broker)
    user = user_model.objects.create_superuser("load-bench", "lb@example.org", PASSWORD)
    report(f"seeding {studies} studies with analysed scans")
    _seed(studies, model_version, user)
    database = database_url(connection.settings_dict)

    report(f"starting {workers} worker(s) with model {model_version}")
    worker_processes = []
    for index in range(workers):
        log_path = work_dir / f"worker-{index}.log"
        worker = start_worker(
            database=database,
            broker=broker,
            media_root=media_root,
            log_path=log_path,
            extra_env={"ML_WEIGHTS_DIR": str(weights)},
            name=f"load{index}",
        )
        processes.append(worker)
        worker_processes.append(worker)
        wait_until_ready(worker, log_path, timeout=900)
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database,
        "REDIS_URL": broker,
        "MEDIA_ROOT": str(media_root),
        "ML_WEIGHTS_DIR": str(weights),
        "SECRET_KEY": settings.SECRET_KEY,
        "DEBUG": "false",
    }
    web = _start_web(port, env, work_dir / "web.log")
    processes.append(web)
    base = f"http://127.0.0.1:{port}"
    _wait_for_web(base, web, work_dir / "web.log")

    ids: list[int] = []
    upload_studies: list[int] = []
    seeded = list(
        analysis_model.objects.filter(
            scan__study__accession_number__startswith="LA"
        ).values_list("scan__study_id", flat=True)[:2000]
    )
    rng = random.Random(3)
    pages = {
        "dashboard": lambda: "/dashboard/",
        "study page (20 scans, being analysed)": lambda: (
            f"/studies/{rng.choice(upload_studies or seeded)}/"
        ),
        "study page (history)": lambda: f"/studies/{rng.choice(seeded)}/",
        "study status poll": lambda: (
            f"/studies/{rng.choice(upload_studies or seeded)}/status.json"
        ),
    }

    uploading = threading.Event()
    uploading.set()

    def busy() -> bool:
        return (
            uploading.is_set()
            or analysis_model.objects.filter(
                pk__in=ids, status__in=("queued", "running")
            ).exists()
        )

    report("measuring page latency from the first upload until the queue is drained")
    _warm_up(base, pages)
    sampler = _Sampler(lambda: _pool_pids(worker_processes), ids, interval=2.0)
    measurer = threading.Thread(
        target=_measure_pages,
        args=(base, pages, result, busy, page_requests),
        daemon=True,
    )
    sampler.start()
    measurer.start()
    report(f"uploading {analyses} scans ({image_size}px PNG) and queueing them")
    started = time.monotonic()
    _upload(analyses, model_version, user, image_size, ids, upload_studies)
    uploading.clear()
    result.enqueue_seconds = time.monotonic() - started
    deadline = time.monotonic() + timeout
    last_report = 0.0
    while busy():
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"not finished after {timeout:.0f}s\n{tail(work_dir / 'worker-0.log')}"
            )
        if time.monotonic() - last_report > 30:
            done = analysis_model.objects.filter(
                pk__in=ids, status__in=("succeeded", "failed")
            ).count()
            report(
                f"  {done}/{analyses} finished after {time.monotonic() - started:.0f}s"
            )
            last_report = time.monotonic()
        time.sleep(1)
    result.drain_seconds = time.monotonic() - started
    sampler.stop.set()
    sampler.join(timeout=10)
    measurer.join(timeout=120)
    result.memory = sampler.samples
    span = analysis_model.objects.filter(pk__in=ids).aggregate(
        first=Min("started_at"), last=Max("finished_at")
    )
    if span["first"] and span["last"]:
        result.worker_span_seconds = (span["last"] - span["first"]).total_seconds()
    result.failed = analysis_model.objects.filter(pk__in=ids, status="failed").count()
    for worker in worker_processes:
        stop_worker(worker)
    point_celery_at(settings.CELERY_BROKER_URL)
    return result


def _end_other_sessions() -> None:
    """PostgreSQL refuses to drop a database with sessions left (a late web worker)."""
    if connection.vendor != "postgresql":
        return
    name = connection.settings_dict["NAME"]
    with connection._nodb_cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            [name],
        )


def _wait_for_web(base: str, web: subprocess.Popen[bytes], log_path: Path) -> None:
    import requests

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if web.poll() is not None:
            raise RuntimeError(f"web server exited:\n{tail(log_path)}")
        try:
            if requests.get(f"{base}/healthz", timeout=5).status_code in (200, 503):
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"web server not up after 120s:\n{tail(log_path)}")


def summary(result: LoadResult) -> list[str]:
    lines = [
        (
            f"model {result.model_version}; {result.workers} worker(s) x concurrency 1; "
            f"{result.studies} seeded studies"
        ),
        (
            f"queued {result.analyses} analyses in {result.enqueue_seconds:.1f}s "
            f"({result.analyses / max(result.enqueue_seconds, 1e-9):.1f} uploads/s through "
            "validation, storage and enqueue)"
        ),
        (
            f"drained in {result.drain_seconds:.1f}s from the first upload: "
            f"{result.throughput:.2f} analyses/s; workers' first claim to last result "
            f"{result.worker_span_seconds:.1f}s; failed {result.failed}"
        ),
    ]
    for page, count in result.errors.items():
        if page not in result.latencies_ms:
            lines.append(f"{page}: every request failed ({count})")
    for page, values in result.latencies_ms.items():
        lines.append(
            f"{page}: n={len(values)} p50={statistics.median(values):.0f}ms "
            f"p95={result.percentile(page, 0.95):.0f}ms max={max(values):.0f}ms"
            + (f" errors={result.errors[page]}" if result.errors.get(page) else "")
        )
    growth = result.memory_growth()
    if growth:
        first, last, ratio = growth
        lines.append(
            f"worker RSS after the first {result.warmup} analyses (warm-up) "
            f"{first:.0f} MB, after all {result.analyses}: {last:.0f} MB, "
            f"{ratio:+.1%} (target <= +10%)"
        )
    step = max(1, len(result.memory) // 12)
    for sample in result.memory[::step]:
        rss = ", ".join(f"{value:.0f}" for value in sample.rss_mb)
        lines.append(
            f"  t={sample.seconds:6.0f}s finished={sample.finished:5d} rss MB=[{rss}]"
        )
    return lines


def figures(result: LoadResult) -> dict[str, Any]:
    """The figures as JSON-ready values (`--json`)."""
    growth = result.memory_growth()
    return {
        "analyses": result.analyses,
        "studies": result.studies,
        "workers": result.workers,
        "model_version": result.model_version,
        "enqueue_seconds": result.enqueue_seconds,
        "drain_seconds": result.drain_seconds,
        "throughput_per_s": result.throughput,
        "failed": result.failed,
        "p95_ms": {page: result.percentile(page, 0.95) for page in result.latencies_ms},
        "p50_ms": {page: result.percentile(page, 0.5) for page in result.latencies_ms},
        "rss_growth": growth[2] if growth else None,
        "memory": [[s.seconds, s.finished, s.rss_mb] for s in result.memory],
    }

"""DICOM receiver benchmark: N ultrasound instances sent by DCMTK's storescu in one
association to a real `manage.py dicom_listener` process.

The listener runs on a fresh SQLite database (or --database-url) with a real Redis as the
broker and a queue of this run's own. The clock runs from storescu's start to its exit,
which comes once the last instance has been answered, i.e. stored, its analysis
committed and its message sent. Memory is the listener's own: its peak resident set size
(VmHWM) after the run minus its resident size before it, after a warm-up association
that loads every module the receiving path needs. Afterwards the database and the queue
are counted: every instance must be a scan with a queued analysis and a message.

The instances are BUSI images (BUSI_DIR) written as Ultrasound Image Storage, explicit VR
little endian, one patient and study, each with its own SOP Instance UID; without the
dataset, synthetic speckle images of the same size.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from PIL import Image
from pydicom.uid import generate_uid

from bench.ingest import _manage, _rss_mb, busi_scans
from bench.launch import bench_scratch, start_listener, stop_process
from bench.synthetic import ultrasound_dicom
from ml.weights_io import placeholder_meta, write_meta

logger = logging.getLogger(__name__)

BENCH_REDIS_DB = 13
TARGET_MEMORY_MB = 100.0
CALLING_AE = "BENCH_SCU"
LISTENER_AE = "BUSAI_BENCH"
# What every instance of a run shares (no birth date, no pixel spacing).
PATIENT_AND_STUDY: dict[str, Any] = {
    "patient_id": "BENCH-DICOM-1",
    "patient_name": "Benchmark^Dicom",
    "birth_date": None,
    "accession": "BENCH-DICOM",
    "study_date": "20260101",
    "spacing": None,
}

COUNT = """
import json
from portal.analyses.models import Analysis
from portal.ingest.models import UploadBatch
batch = UploadBatch.objects.filter(source="dicom").order_by("-pk").first()
scans = batch.items.filter(scan__isnull=False).values_list("scan_id", flat=True)
print(json.dumps({
    "accepted": batch.accepted_count,
    "rejected": batch.rejected_count,
    "scans": len(set(scans)),
    "queued": Analysis.objects.filter(scan_id__in=scans, status="queued").count(),
}))
"""


@dataclass
class DicomBenchResult:
    n: int
    megabytes: float
    seconds: float
    storescu_exit: int
    accepted: int
    rejected: int
    scans: int
    queued: int
    enqueued: int
    rss_before_mb: float
    rss_peak_mb: float
    source: str

    @property
    def memory_growth_mb(self) -> float:
        return self.rss_peak_mb - self.rss_before_mb

    @property
    def none_lost(self) -> bool:
        return self.accepted == self.scans == self.queued == self.enqueued == self.n


def _images(n: int, busi_dir: Path) -> tuple[list[np.ndarray], str]:
    try:
        paths = busi_scans(busi_dir, n)
    except FileNotFoundError:
        rng = np.random.default_rng(12)
        return [
            rng.gamma(2.0, 40.0, size=(450, 560)).clip(0, 255).astype(np.uint8)
            for _ in range(n)
        ], "synthetic speckle 560x450"
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(np.asarray(image.convert("L")))
    return images, f"BUSI images from {busi_dir}"


def write_instances(folder: Path, n: int, busi_dir: Path) -> tuple[str, str, int]:
    """N instances of one new study in folder; returns (study UID, source, bytes)."""
    images, source = _images(n, busi_dir)
    study_uid, series_uid = str(generate_uid()), str(generate_uid())
    total = 0
    for number, pixels in enumerate(images, start=1):
        content = ultrasound_dicom(
            np.ascontiguousarray(pixels, np.uint8),
            study_uid=study_uid,
            series_uid=series_uid,
            instance_number=number,
            **PATIENT_AND_STUDY,
        )
        (folder / f"{number:04}.dcm").write_bytes(content)
        total += len(content)
    return study_uid, source, total


def storescu(port: int, files: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "storescu",
            "--required",
            "--no-halt",
            "-aet",
            CALLING_AE,
            "-aec",
            LISTENER_AE,
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=3600,
    )


def run(
    *,
    n: int,
    busi_dir: Path | None = None,
    database_url: str | None = None,
    report: Callable[[str], None] = logger.info,
) -> DicomBenchResult:
    if shutil.which("storescu") is None:
        raise FileNotFoundError("storescu not found: apt-get install dcmtk")
    busi_dir = Path(busi_dir or settings.BUSI_DIR)
    with bench_scratch("dicom", BENCH_REDIS_DB) as (broker, client, queue, work):
        listener = None
        try:
            instances, warm = work / "instances", work / "warm"
            instances.mkdir()
            warm.mkdir()
            _, source, size = write_instances(instances, n, busi_dir)
            write_instances(warm, 2, busi_dir)
            report(f"{n} ultrasound instances ({size / 1024**2:.1f} MB), {source}")

            weights = work / "weights"
            weights.mkdir()
            write_meta(weights, placeholder_meta("bench"))
            media = work / "media"
            media.mkdir()
            port = 11112 + 100 + secrets.randbelow(1000)
            env = {
                **os.environ,
                "DJANGO_SETTINGS_MODULE": "portal.settings",
                "DEBUG": "0",
                "SECRET_KEY": secrets.token_urlsafe(40),
                "DATABASE_URL": database_url or f"sqlite:///{work / 'bench.sqlite3'}",
                "REDIS_URL": broker,
                "MEDIA_ROOT": str(media),
                "ML_WEIGHTS_DIR": str(weights),
                "STORAGE_BACKEND": "local",
                "LOG_LEVEL": "WARNING",
                "CELERY_INFERENCE_QUEUE": queue,
                "DICOM_AE_TITLE": LISTENER_AE,
                "DICOM_PORT": str(port),
                "DICOM_ALLOWED_CALLING_AE_TITLES": CALLING_AE,
            }
            report("migrating a fresh database")
            _manage(env, "migrate", "--noinput")
            listener = start_listener(env, work / "listener.log", timeout=120)

            warm_up = storescu(port, sorted(warm.iterdir()))
            if warm_up.returncode != 0:
                raise RuntimeError(
                    f"warm-up association failed:\n{warm_up.stderr[-2000:]}"
                )
            client.delete(queue)
            rss_before = _rss_mb(listener.pid)
            report(f"listener {listener.pid}: {rss_before:.0f} MB resident; sending")

            started = time.perf_counter()
            result = storescu(port, sorted(instances.iterdir()))
            seconds = time.perf_counter() - started
            rss_peak = _rss_mb(listener.pid, "VmHWM")
            # The report closes when the association is released.
            time.sleep(1.0)
            counts = json.loads(
                _manage(env, "shell", "--verbosity", "0", "-c", COUNT)
                .strip()
                .splitlines()[-1]
            )
            return DicomBenchResult(
                n=n,
                megabytes=size / 1024**2,
                seconds=seconds,
                storescu_exit=result.returncode,
                accepted=counts["accepted"],
                rejected=counts["rejected"],
                scans=counts["scans"],
                queued=counts["queued"],
                enqueued=int(client.llen(queue)),
                rss_before_mb=rss_before,
                rss_peak_mb=rss_peak,
                source=source,
            )
        finally:
            if listener is not None:
                stop_process(listener)


def summary(r: DicomBenchResult) -> list[str]:
    memory_ok = r.memory_growth_mb < TARGET_MEMORY_MB
    return [
        f"instances: {r.n} ({r.megabytes:.1f} MB), {r.source}, one association",
        f"storescu exit status {r.storescu_exit}",
        (
            f"stored {r.scans} scans (report: {r.accepted} accepted, {r.rejected} "
            f"rejected), {r.queued} analyses queued, {r.enqueued} messages in the "
            f"queue: {'none lost' if r.none_lost else 'SOME LOST'}"
        ),
        (
            f"throughput: {r.n / r.seconds:.1f} instances/s, "
            f"{r.megabytes / r.seconds:.1f} MB/s ({r.seconds:.1f} s)"
        ),
        (
            f"listener memory: {r.rss_before_mb:.0f} MB before, peak "
            f"{r.rss_peak_mb:.0f} MB, growth {r.memory_growth_mb:.1f} MB (target < "
            f"{TARGET_MEMORY_MB:.0f} MB: {'met' if memory_ok else 'NOT met'})"
        ),
    ]

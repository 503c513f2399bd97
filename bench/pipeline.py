"""Pipeline benchmark: N real images through portal services -> Redis -> a real worker ->
database, against bare `Analyzer.analyze` on the same images in the same run.

The worker is started and warmed up (model loaded, batch shape traced) before the clock
starts, and the bare model gets the same warm-up, so the ratio compares steady states.

Two figures against the bare model:
- pipeline: the clock runs from the first upload to the last result (uploads and the
  worker share the machine);
- worker drain: the same N images stored and their analyses queued first (messages held
  back), then the clock starts, their N messages go to Redis, and it stops at the last
  result the worker records: the worker's own cost, as a production queue backlog sees it.

The bare model is timed in this process just before and just after the drain (the worker
idle meanwhile), and both ratios use the mean: the load others put on a shared machine
drifts within a minute, and a single timing taken after the worker stopped made the
ratio swing by a third between runs.

`profile(n=...)` runs the worker's pipeline in this process under cProfile, every stage
inline, on N stored scans (`python -m bench pipeline --profile`).
"""

from __future__ import annotations

import cProfile
import io
import logging
import os
import pstats
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Max, Min
from django.test.utils import override_settings
from django.utils import timezone

from bench.ingest import busi_scans
from bench.launch import (
    database_url,
    point_celery_at,
    redis_url_with_db,
    start_worker,
    stop_worker,
    tail,
    wait_until_ready,
)
from portal.analyses import queue
from portal.analyses.modelinfo import current_model_version, model_input_side
from portal.analyses.models import Analysis
from portal.analyses.services import scan_submit
from portal.clinical.models import Scan, Study
from portal.clinical.services import patient_create, study_create
from portal.clinical.uploads import validate_content

logger = logging.getLogger(__name__)

BENCH_REDIS_DB = 14


@dataclass
class BenchResult:
    n: int
    pipeline_seconds: float
    pipeline_failed: int
    upload_seconds: float
    worker_seconds: float
    bare_seconds: float  # the mean of the two timings around the drain
    bare_before_seconds: float
    bare_after_seconds: float
    bare_with_artifacts_seconds: float  # bare analyze + encoding what a worker stores
    # Bare analyze on the model inputs the uploads stored (what the worker reads: no
    # resize to the model's square): the mean of a timing before and after the drain.
    bare_inputs_seconds: float
    drain_seconds: (
        float  # worker alone on N queued analyses: messages sent to last result
    )
    drain_failed: int
    drain_worker_seconds: float  # the same drain, its first claim to its last result
    # CPU seconds (user + system): the worker's processes over the drain, and this
    # process over the bare model (the mean of its two timings). What others' load on
    # the machine changes least; the database server's CPU is in neither.
    drain_cpu_seconds: float
    bare_cpu_seconds: float
    load_average: tuple[float, float, float]  # at the end of the run (others' work)

    @property
    def pipeline_rate(self) -> float:
        return self.n / self.pipeline_seconds

    @property
    def bare_rate(self) -> float:
        return self.n / self.bare_seconds

    @property
    def bare_with_artifacts_rate(self) -> float:
        return self.n / self.bare_with_artifacts_seconds

    @property
    def ratio(self) -> float:
        return self.pipeline_rate / self.bare_rate

    @property
    def drain_rate(self) -> float:
        return self.n / self.drain_seconds

    @property
    def drain_ratio(self) -> float:
        return self.drain_rate / self.bare_rate

    @property
    def model_ms_per_scan(self) -> float:
        return self.bare_seconds / self.n * 1000

    @property
    def worker_ms_per_scan(self) -> float:
        return self.worker_seconds / self.n * 1000

    @property
    def drain_inputs_ratio(self) -> float:
        """The drain against bare analyze on the same model inputs the worker reads."""
        return self.bare_inputs_seconds / self.drain_seconds

    @property
    def drain_cpu_ms_per_scan(self) -> float:
        return self.drain_cpu_seconds / self.n * 1000

    @property
    def bare_cpu_ms_per_scan(self) -> float:
        return self.bare_cpu_seconds / self.n * 1000

    @property
    def worker_overhead(self) -> float:
        """Worker time per scan beyond the model's, as a fraction of the model's."""
        return (self.worker_seconds - self.bare_seconds) / self.bare_seconds


def _wait_finished(ids: list[int], timeout: float, log_path: Path) -> int:
    deadline = time.monotonic() + timeout
    while True:
        finished = Analysis.objects.filter(
            pk__in=ids, status__in=[Analysis.Status.SUCCEEDED, Analysis.Status.FAILED]
        ).count()
        if finished == len(ids):
            return Analysis.objects.filter(
                pk__in=ids, status=Analysis.Status.FAILED
            ).count()
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{finished}/{len(ids)} finished after {timeout}s\n{tail(log_path)}"
            )
        time.sleep(0.05)


def _storages_in(root: Path) -> dict[str, Any]:
    """STORAGES with the default storage in a scratch folder of the run."""
    return {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(root)},
        },
    }


def _bench_study(description: str) -> tuple[Any, Study]:
    """The benchmark's user and a new study of a new patient, for its uploads."""
    user, _ = get_user_model().objects.get_or_create(username="bench-pipeline")
    patient = patient_create(identifier=f"BENCH-{time.time_ns()}", name="Benchmark")
    return user, study_create(patient=patient, created_by=user, description=description)


# Uploads go to studies of this many scans, as a clinic's do (a handful of images per
# examination). Recording a result recounts its study's worklist columns from all of the
# study's scans, so one study of every upload of a run (200 and more) would charge each
# batch for a study no clinic has.
SCANS_PER_STUDY = 4


def run(
    *,
    n: int,
    timeout: float = 3600,
    busi_dir: Path | None = None,
    report: Callable[[str], None] = logger.info,
) -> BenchResult:
    busi_dir = Path(busi_dir or settings.BUSI_DIR)
    paths = busi_scans(busi_dir, n)
    warmup_paths = busi_scans(busi_dir, settings.ANALYSIS_BATCH_SIZE)
    contents = [p.read_bytes() for p in paths]
    model_version = current_model_version()
    report(f"model {model_version}; {n} BUSI images from {busi_dir}")

    work_dir = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    media_root = work_dir / "media"
    media_root.mkdir()
    broker = redis_url_with_db(settings.REDIS_URL, BENCH_REDIS_DB)
    storages = _storages_in(media_root)
    user, study = _bench_study("pipeline benchmark")
    log_path = work_dir / "worker.log"
    worker = None
    try:
        with override_settings(
            STORAGES=storages, MEDIA_ROOT=media_root, CELERY_BROKER_URL=broker
        ):
            point_celery_at(broker)
            import redis

            redis.Redis.from_url(broker).flushdb()
            worker = start_worker(
                database=database_url(connection.settings_dict),
                broker=broker,
                media_root=media_root,
                log_path=log_path,
                name="bench",
                # As deployed: DEBUG would keep every query's SQL in the worker.
                extra_env={"DEBUG": "0"},
            )
            wait_until_ready(worker, log_path, timeout=600)
            report("worker ready; warming up")
            warm_ids = _upload(
                study, user, [p.read_bytes() for p in warmup_paths], model_version
            )
            _wait_finished(warm_ids, 600, log_path)

            report(f"pushing {n} images through the pipeline")
            started = time.perf_counter()
            ids = _upload(study, user, contents, model_version)
            upload_seconds = time.perf_counter() - started
            failed = _wait_finished(ids, timeout, log_path)
            pipeline_seconds = time.perf_counter() - started
            span = Analysis.objects.filter(pk__in=ids).aggregate(
                first=Min("started_at"), last=Max("finished_at")
            )
            worker_seconds = (span["last"] - span["first"]).total_seconds()
            if failed:
                errors = set(
                    Analysis.objects.filter(pk__in=ids, status="failed").values_list(
                        "error", flat=True
                    )
                )
                report(f"{failed} analyses failed: {sorted(errors)[:3]}")

            report(f"storing {n} scans with their messages held back (worker drain)")
            with _messages_held_back() as held:
                drain_ids = _upload(study, user, contents, model_version)
            assert sorted(held) == sorted(drain_ids), "every upload queues one analysis"
            # The bare model in this process, timed just before and just after the
            # drain while the worker waits: others' load on the machine drifts within
            # a minute, and the drain is compared with the mean of the two.
            report("loading the bare model; timing it before the drain")
            bare = _BareModel(contents, warmup_paths)
            bare_cpu = time.process_time()
            bare_before = bare.seconds()
            bare_cpu = time.process_time() - bare_cpu
            bare_inputs = bare.inputs_seconds()
            report(f"sending the {n} held messages (worker drain)")
            worker_cpu = _cpu_seconds(worker.pid)
            drain_seconds, drain_worker_seconds, drain_failed = _drain(
                drain_ids, timeout, log_path
            )
            drain_cpu = _cpu_seconds(worker.pid) - worker_cpu
            report("timing the bare model again after the drain")
            bare_cpu -= time.process_time()
            bare_after = bare.seconds()
            bare_cpu += time.process_time()
            bare_inputs = (bare_inputs + bare.inputs_seconds()) / 2
            stop_worker(worker)
            worker = None
    finally:
        if worker is not None:
            stop_worker(worker)
        point_celery_at(settings.CELERY_BROKER_URL)
        _cleanup(study)
        shutil.rmtree(work_dir, ignore_errors=True)

    bare_seconds = (bare_before + bare_after) / 2
    with_artifacts_seconds = bare_seconds + bare.artifacts_seconds()
    return BenchResult(
        n=n,
        pipeline_seconds=pipeline_seconds,
        pipeline_failed=failed,
        upload_seconds=upload_seconds,
        worker_seconds=worker_seconds,
        bare_seconds=bare_seconds,
        bare_before_seconds=bare_before,
        bare_after_seconds=bare_after,
        bare_with_artifacts_seconds=with_artifacts_seconds,
        drain_seconds=drain_seconds,
        drain_failed=drain_failed,
        drain_worker_seconds=drain_worker_seconds,
        bare_inputs_seconds=bare_inputs,
        drain_cpu_seconds=drain_cpu,
        bare_cpu_seconds=bare_cpu / 2,
        load_average=os.getloadavg(),
    )


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its children so far (the worker's
    pool processes are its children)."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


@contextmanager
def _messages_held_back() -> Iterator[list[int]]:
    """Rows are stored and queued, but no message is sent (their ids are collected)."""
    held: list[int] = []
    with mock.patch.object(queue, "send_analysis", held.append):
        yield held


def _drain(ids: list[int], timeout: float, log_path: Path) -> tuple[float, float, int]:
    """The warm worker alone on N stored scans whose messages were held back: seconds
    from sending their messages to the last recorded result, from its first claim to
    that result, and how many failed."""
    started = timezone.now()
    for analysis_id in ids:
        queue.send_analysis(analysis_id)
    failed = _wait_finished(ids, timeout, log_path)
    span = Analysis.objects.filter(pk__in=ids).aggregate(
        first=Min("started_at"), last=Max("finished_at")
    )
    return (
        (span["last"] - started).total_seconds(),
        (span["last"] - span["first"]).total_seconds(),
        failed,
    )


def profile(
    *,
    n: int,
    busi_dir: Path | None = None,
    top: int = 40,
    stats_path: Path | None = None,
    cpu: bool = False,
    report: Callable[[str], None] = logger.info,
) -> str:
    """The worker's pipeline on N stored scans, in this process under cProfile, with
    every stage inline (ANALYSIS_RENDER_THREADS=0, so the profile sees them all); the
    statistics sorted by own time and by cumulative time. `cpu`: timed by this
    process's CPU time (all its threads) instead of the wall clock."""
    from portal.analyses.services import analysis_claim
    from workers.analyzer import get_analyzer
    from workers.tasks import Pipeline

    def drain(ids: list[int]) -> None:  # as analyze_scan does for its message
        assert analysis_claim(analysis_id=ids[0], worker="bench-profile")
        Pipeline(analyzer, worker="bench-profile").drain(first_id=ids[0])

    busi_dir = Path(busi_dir or settings.BUSI_DIR)
    contents = [p.read_bytes() for p in busi_scans(busi_dir, n)]
    warmup = [
        p.read_bytes() for p in busi_scans(busi_dir, settings.ANALYSIS_BATCH_SIZE)
    ]
    model_version = current_model_version()
    work_dir = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    storages = _storages_in(work_dir)
    user, study = _bench_study("profile")
    try:
        with override_settings(
            STORAGES=storages,
            MEDIA_ROOT=work_dir,
            ANALYSIS_RENDER_THREADS=0,
            DEBUG=False,  # as a deployed worker: no SQL kept per query
        ):
            analyzer = get_analyzer()
            with _messages_held_back():
                warm_ids = _upload(study, user, warmup, model_version)
            drain(warm_ids)
            with _messages_held_back():
                ids = _upload(study, user, contents, model_version)
            report(f"profiling the worker's pipeline on {n} stored scans")
            clock = time.process_time if cpu else time.perf_counter
            profiler = cProfile.Profile(clock)
            started = clock()
            profiler.enable()
            drain(ids)
            profiler.disable()
            seconds = clock() - started
            done = Analysis.objects.filter(
                pk__in=ids, status=Analysis.Status.SUCCEEDED
            ).count()
    finally:
        _cleanup(study)
        shutil.rmtree(work_dir, ignore_errors=True)
    out = io.StringIO()
    out.write(
        f"{done}/{n} analyses in {seconds:.2f}s {'of CPU' if cpu else 'wall'} "
        f"({seconds / n * 1000:.1f} ms a scan), "
        f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}\n"
    )
    if stats_path is not None:  # for snakeviz, or pstats' browser
        profiler.dump_stats(stats_path)
    stats = pstats.Stats(profiler, stream=out)
    stats.strip_dirs()
    out.write(_stage_breakdown(stats, n))
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


# The worker's stages in the profile: (label, (module file, function)), cumulative time.
_STAGES = (
    ("the whole drain", ("tasks.py", "drain")),
    ("model: Analyzer.analyze", ("tasks.py", "_analyze")),
    (
        "  of which resizing to the model's square",
        ("model_input.py", "resize_for_model"),
    ),
    ("claiming the next batch", ("services.py", "analysis_claim_waiting")),
    ("reading the rows, decoding the stored scans", ("tasks.py", "_load")),
    ("  of which decode_image", ("decode.py", "decode_image")),
    ("  of which reading stored model inputs", ("model_input.py", "from_npy")),
    ("registry lookups for the shadow model", ("tasks.py", "_shadow")),
    ("storing a batch's results (_finish)", ("tasks.py", "_finish")),
    ("  encoding the mask and heatmaps", ("inference.py", "stored_artifacts")),
    ("  analyses_record_success", ("services.py", "analyses_record_success")),
    ("    files", ("services.py", "_store_artifacts")),
    ("    the rows' UPDATE", ("services.py", "_write_rows")),
    ("    audit entries", ("services.py", "audit_updates")),
    ("    worklist recount", ("receivers.py", "refresh_worklist_columns")),
)


def _stage_breakdown(stats: pstats.Stats, n: int) -> str:
    """Milliseconds a scan in each stage of the worker (cumulative, so nested)."""
    cumulative: dict[tuple[str, str], float] = {}
    for (filename, _, function), row in stats.stats.items():  # type: ignore[attr-defined]
        key = (filename, function)
        cumulative[key] = cumulative.get(key, 0.0) + row[3]
    lines = ["per scan, by stage (cumulative, under the profiler):"]
    for label, key in _STAGES:
        lines.append(f"  {label:<48} {cumulative.get(key, 0.0) / n * 1000:7.1f} ms")
    whole = cumulative.get(_STAGES[0][1], 0.0)
    model = cumulative.get(_STAGES[1][1], 0.0)
    lines.append(f"  {'beyond the model':<48} {(whole - model) / n * 1000:7.1f} ms")
    return "\n".join(lines) + "\n\n"


def _upload(
    study: Study, user: object, contents: list[bytes], model_version: str
) -> list[int]:
    """Upload each image, SCANS_PER_STUDY to a study: `study`'s patient's new studies,
    each stored as ingestion stores it (with the model input the worker reads)."""
    side = model_input_side(model_version=model_version)
    ids = []
    for index, content in enumerate(contents):
        if index % SCANS_PER_STUDY == 0:
            study = study_create(
                patient=study.patient, created_by=user, description=study.description
            )
        upload = validate_content(
            filename=f"bench-{index}.png", content=content, model_input_side=side
        )
        scan = scan_submit(
            study=study, upload=upload, uploaded_by=user, model_version=model_version
        )
        ids.append(scan.analyses.values_list("pk", flat=True).get())
    return ids


class _BareModel:
    """`Analyzer.analyze` on the run's images, decoded beforehand, in this process."""

    def __init__(self, contents: list[bytes], warmup_paths: list[Path]) -> None:
        from ml.decode import decode_image
        from ml.inference import Analyzer
        from ml.model_input import model_input

        self.analyzer = Analyzer.load(settings.ML_WEIGHTS_DIR)
        self.batch_size = settings.ANALYSIS_BATCH_SIZE
        self.analyzer.analyze(
            [decode_image(p) for p in warmup_paths], batch_size=self.batch_size
        )
        self.images = [decode_image(content) for content in contents]
        # What the worker reads instead: the model inputs the uploads stored.
        self.inputs = [
            model_input(image.pixels, self.analyzer.image_size) for image in self.images
        ]
        self.results: list[Any] = []

    def seconds(self) -> float:
        started = time.perf_counter()
        self.results = self.analyzer.analyze(self.images, batch_size=self.batch_size)
        return time.perf_counter() - started

    def inputs_seconds(self) -> float:
        """`analyze` on the model inputs (no resize to the model's square in it)."""
        started = time.perf_counter()
        self.analyzer.analyze(self.inputs, batch_size=self.batch_size)
        return time.perf_counter() - started

    def artifacts_seconds(self) -> float:
        """Encoding what a worker stores of the last results."""
        started = time.perf_counter()
        for result in self.results:
            result.stored_artifacts()
        return time.perf_counter() - started


def _cleanup(study: Study) -> None:
    """Delete the run's patient, its studies, scans and analyses."""
    patient = study.patient
    studies = Study.objects.filter(patient=patient)
    scans = Scan.objects.filter(study__in=studies)
    Analysis.objects.filter(scan__in=scans).delete()
    scans.delete()
    studies.delete()
    patient.delete()

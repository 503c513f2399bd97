"""``python -m bench {ml,pipeline,load,ingest,dicom}``: each prints its figures on stdout.

Progress goes to stderr. The portal's benchmarks set Django up here, before importing
the modules that use the portal's models; `ml` loads TensorFlow and nothing of Django.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

PIPELINE_TARGET_RATIO = 0.9
PIPELINE_TARGET_WORKER_OVERHEAD = 0.10


def _report(line: str) -> None:
    sys.stderr.write(line.rstrip("\n") + "\n")
    sys.stderr.flush()


def _write(lines: list[str]) -> None:
    sys.stdout.write("\n".join(lines) + "\n")


def setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    import django
    from django.apps import apps

    # Once only: a second setup (a test calling main()) would re-run the logging
    # configuration and bind its handlers to a stream the caller later closes.
    if not apps.ready:
        django.setup()


def cmd_ml(args: argparse.Namespace) -> int:
    from bench.model import run

    report = run(args.data, args.weights, images=args.images, repeats=args.repeats)
    width = max(len(key) for key in report)
    _write([f"{key:<{width}}  {value}" for key, value in report.items()])
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from bench import pipeline

    if args.profile:
        figures = pipeline.profile(
            n=args.n,
            busi_dir=args.busi_dir,
            stats_path=args.stats,
            cpu=args.cpu,
            report=_report,
        )
        _write([figures])
        return 0
    r = pipeline.run(
        n=args.n, timeout=args.timeout, busi_dir=args.busi_dir, report=_report
    )
    verdict = "met" if r.ratio >= PIPELINE_TARGET_RATIO else "NOT met"
    rate = f"{r.pipeline_rate:.2f} images/s ({r.pipeline_seconds:.1f}s)"
    breakdown = (
        f"portal uploads (validate, store, enqueue) {r.upload_seconds:.1f}s; "
        f"worker first claim to last result {r.worker_seconds:.1f}s"
    )
    bare = (
        f"{r.bare_rate:.2f} images/s ({r.bare_seconds:.1f}s: the mean of "
        f"{r.bare_before_seconds:.1f}s before and {r.bare_after_seconds:.1f}s after "
        "the drain)"
    )
    stored = f"{r.bare_with_artifacts_rate:.2f} images/s"
    ratio = f"{r.ratio:.1%} (target >= {PIPELINE_TARGET_RATIO:.0%}: {verdict})"
    drain_verdict = "met" if r.drain_ratio >= PIPELINE_TARGET_RATIO else "NOT met"
    drain_ratio = (
        f"{r.drain_ratio:.1%} (target >= {PIPELINE_TARGET_RATIO:.0%}: {drain_verdict})"
    )
    drain = (
        f"{r.drain_rate:.2f} images/s ({r.drain_seconds:.1f}s from sending the "
        f"messages to the last result, {r.drain_worker_seconds:.1f}s from the "
        f"first claim; failed: {r.drain_failed})"
    )
    load = " ".join(f"{v:.2f}" for v in r.load_average) + " (1, 5, 15 min)"
    overhead_verdict = (
        "met" if r.worker_overhead <= PIPELINE_TARGET_WORKER_OVERHEAD else "NOT met"
    )
    overhead = (
        f"{r.worker_ms_per_scan - r.model_ms_per_scan:.1f} ms per scan beyond the "
        f"model's {r.model_ms_per_scan:.1f} ms: {r.worker_overhead:.1%} "
        f"(target <= {PIPELINE_TARGET_WORKER_OVERHEAD:.0%}: {overhead_verdict})"
    )
    inputs = (
        f"{r.drain_inputs_ratio:.1%} (bare on the model inputs the worker reads: "
        f"{r.n / r.bare_inputs_seconds:.2f} images/s, {r.bare_inputs_seconds:.1f}s, "
        "the mean of a timing before and after the drain)"
    )
    cpu = (
        f"worker drain {r.drain_cpu_ms_per_scan:.1f} ms, bare analyze "
        f"{r.bare_cpu_ms_per_scan:.1f} ms, beyond the model "
        f"{r.drain_cpu_ms_per_scan - r.bare_cpu_ms_per_scan:.1f} ms (the database "
        "server's not counted)"
    )
    _write(
        [
            f"images: {r.n} (failed in pipeline: {r.pipeline_failed})",
            f"pipeline portal -> redis -> worker -> db: {rate}",
            f"  {breakdown}",
            f"bare ml Analyzer.analyze: {bare}",
            f"bare ml analyze + encoding the stored outputs: {stored}",
            f"ratio pipeline / bare analyze: {ratio}",
            f"worker drain ({r.n} stored scans queued first): {drain}",
            f"ratio worker drain / bare analyze: {drain_ratio}",
            f"  against bare analyze on the stored model inputs: {inputs}",
            f"worker time (first claim to last result) {overhead}",
            f"CPU per scan: {cpu}",
            f"load average at the end: {load}",
        ]
    )
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from bench import load

    result = load.run(
        analyses=args.analyses,
        studies=args.studies,
        workers=args.workers,
        image_size=args.image_size,
        page_requests=args.page_requests,
        timeout=args.timeout,
        weights_dir=args.weights,
        report=_report,
        warmup=args.warmup,
    )
    _write(load.summary(result))
    if args.json:
        args.json.write_text(json.dumps(load.figures(result), indent=2))
    return 0


def _run_against_processes(
    bench: ModuleType,
    args: argparse.Namespace,
    errors: tuple[type[Exception], ...],
    **options: Any,
) -> Any | None:
    """The benchmark module's run() with the arguments of `_add_process_bench`, its
    summary on stdout; None after one of `errors`, which is reported."""
    try:
        result = bench.run(
            n=args.n,
            busi_dir=args.busi_dir,
            database_url=args.database_url,
            report=_report,
            **options,
        )
    except errors as exc:
        _report(f"error: {exc}")
        return None
    _write(bench.summary(result))
    return result


def cmd_ingest(args: argparse.Namespace) -> int:
    from bench import ingest

    if args.scale:
        sizes = sorted(int(size) for size in args.scale.split(","))
        _write(
            ingest.scale(
                sizes=sizes,
                busi_dir=args.busi_dir,
                database_url=args.database_url,
                report=_report,
            )
        )
        return 0
    result = _run_against_processes(ingest, args, (OSError,), analyse=args.analyse)
    return 2 if result is None else 0


def cmd_dicom(args: argparse.Namespace) -> int:
    from bench import dicom

    result = _run_against_processes(dicom, args, (OSError, RuntimeError))
    if result is None:
        return 2
    return 0 if result.none_lost else 1


def _add_process_bench(
    parser: argparse.ArgumentParser, *, n: int, what: str, process: str
) -> None:
    parser.add_argument("--n", type=int, default=n, help=f"{what} (default {n})")
    parser.add_argument("--busi-dir", default=None, help="default: BUSI_DIR")
    parser.add_argument(
        "--database-url",
        default=None,
        help=f"database for the {process} (default: a fresh SQLite file)",
    )


def _add_dicom(parser: argparse.ArgumentParser) -> None:
    _add_process_bench(parser, n=100, what="instances", process="listener")


def _add_ml(parser: argparse.ArgumentParser) -> None:
    from ml.config import busi_dir

    parser.add_argument("--data", type=Path, default=busi_dir())
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)


def _add_pipeline(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--n", type=int, default=100, help="number of images (default 100)"
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait")
    parser.add_argument(
        "--busi-dir", default=None, help="dataset root (default BUSI_DIR)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help=(
            "instead: run the worker's pipeline on N stored scans in this process "
            "under cProfile, every stage inline, and print where the time goes"
        ),
    )
    parser.add_argument(
        "--stats",
        type=Path,
        default=None,
        help="with --profile: also write the raw stats",
    )
    parser.add_argument(
        "--cpu",
        action="store_true",
        help=(
            "with --profile: time this process's CPU (every thread, TensorFlow's "
            "included), not the wall clock: steadier on a machine others load; the "
            "database server's CPU is not in it"
        ),
    )


def _add_load(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--analyses", type=int, default=2000)
    parser.add_argument("--studies", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--image-size", type=int, default=256, help="side of the uploaded PNGs"
    )
    parser.add_argument(
        "--page-requests",
        type=int,
        default=200,
        help="rounds of page requests at most (each round requests every page)",
    )
    parser.add_argument("--timeout", type=float, default=4 * 3600)
    parser.add_argument(
        "--warmup",
        type=int,
        default=300,
        help="analyses before worker memory is taken as the baseline",
    )
    parser.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="model folder (default ML_WEIGHTS_DIR)",
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="also write the figures here"
    )


def _add_ingest(parser: argparse.ArgumentParser) -> None:
    _add_process_bench(parser, n=300, what="images", process="web process")
    parser.add_argument(
        "--analyse",
        action="store_true",
        help="then run a worker and time the analyses (needs a trained model)",
    )
    parser.add_argument(
        "--scale",
        default=None,
        metavar="N,N",
        help=(
            "instead: one zip of each size (e.g. 500,5000) through the API and through "
            "import_scans; time per file and peak memory, flat or not"
        ),
    )


def cmd_pages(args: argparse.Namespace) -> int:
    from bench import pages

    result = pages.run(
        studies=args.studies,
        scans_per_study=args.scans,
        requests=args.requests,
        report=_report,
        keep=args.keep,
        only=args.only,
    )
    _write(result.lines())
    if args.json:
        args.json.write_text(json.dumps(result.figures(), indent=2))
    return 0


def cmd_paint(args: argparse.Namespace) -> int:
    from bench import paint

    result = paint.run(loads=args.loads, report=_report)
    _write(result.lines())
    return 0


def _add_paint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--loads", type=int, default=10, help="page loads to time")


def _add_pages(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--studies", type=int, default=10_000)
    parser.add_argument("--scans", type=int, default=20, help="scans per study")
    parser.add_argument("--requests", type=int, default=20, help="requests per page")
    parser.add_argument("--json", type=Path, default=None, help="also write figures")
    parser.add_argument(
        "--keep",
        action="store_true",
        help=(
            "keep the benchmark's database (<name>_bench_pages) and reuse it when it "
            "holds this size: measure a change without seeding again"
        ),
    )
    parser.add_argument(
        "--only",
        default="",
        help="time only the pages whose name contains this text (to try one change)",
    )


# name: (help, arguments, command, needs Django)
COMMANDS: dict[
    str,
    tuple[
        str,
        Callable[[argparse.ArgumentParser], None],
        Callable[[argparse.Namespace], int],
        bool,
    ],
] = {
    "ml": (
        "per-image time of the full analysis, against the earlier prototype",
        _add_ml,
        cmd_ml,
        False,
    ),
    "pipeline": (
        (
            "N real BUSI images through portal services -> Redis -> a real worker -> "
            "database, against bare ml throughput on the same images"
        ),
        _add_pipeline,
        cmd_pipeline,
        True,
    ),
    "load": (
        (
            "in a throwaway database: seed studies, queue analyses, run real workers "
            "and gunicorn; throughput, page latency p50/p95 and worker memory over time"
        ),
        _add_load,
        cmd_load,
        True,
    ),
    "pages": (
        (
            "in a throwaway database of the configured kind: seed STUDIES studies of "
            "SCANS analysed scans, then p50/p95 server time of every page"
        ),
        _add_pages,
        cmd_pages,
        True,
    ),
    "paint": (
        (
            "in a throwaway database of the configured kind: first paint of the review "
            "page (1024 px display copy) in headless Chromium at 1366x768"
        ),
        _add_paint,
        cmd_paint,
        True,
    ),
    "ingest": (
        (
            "POST one zip of N BUSI images to a real gunicorn web process: time until "
            "all are accepted and enqueued, and the web process's memory growth"
        ),
        _add_ingest,
        cmd_ingest,
        True,
    ),
    "dicom": (
        (
            "send N ultrasound instances with DCMTK's storescu in one association to a "
            "real dicom_listener: all stored and queued, throughput, listener memory"
        ),
        _add_dicom,
        cmd_dicom,
        True,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, _, _) in COMMANDS.items():
        add_arguments(commands.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    _, _, command, needs_django = COMMANDS[args.command]
    if needs_django:
        setup_django()
    else:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    return command(args)

"""`manage.py bench_load`: queue many analyses; throughput, page latency, worker memory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = (
        "In a throwaway database: seed STUDIES studies, queue ANALYSES uploads, run "
        "real workers and gunicorn, and report throughput, p50/p95 latency of the "
        "dashboard and study pages while the workers are busy, and worker RSS over time."
    )

    def add_arguments(self, parser: CommandParser) -> None:
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
            "--weights", default=None, help="model folder (default ML_WEIGHTS_DIR)"
        )
        parser.add_argument("--json", default=None, help="also write the figures here")

    def handle(self, *args: Any, **options: Any) -> None:
        # Imported here: the workers it starts load TensorFlow; this process does not.
        from workers import loadbench

        result = loadbench.run(
            analyses=options["analyses"],
            studies=options["studies"],
            workers=options["workers"],
            image_size=options["image_size"],
            page_requests=options["page_requests"],
            timeout=options["timeout"],
            weights_dir=Path(options["weights"]) if options["weights"] else None,
            report=lambda line: self.stderr.write(line),
            warmup=options["warmup"],
        )
        self.stdout.write("\n".join(loadbench.summary(result)))
        if options["json"]:
            growth = result.memory_growth()
            Path(options["json"]).write_text(
                json.dumps(
                    {
                        "analyses": result.analyses,
                        "studies": result.studies,
                        "workers": result.workers,
                        "model_version": result.model_version,
                        "enqueue_seconds": result.enqueue_seconds,
                        "drain_seconds": result.drain_seconds,
                        "throughput_per_s": result.throughput,
                        "failed": result.failed,
                        "p95_ms": {
                            page: result.percentile(page, 0.95)
                            for page in result.latencies_ms
                        },
                        "p50_ms": {
                            page: result.percentile(page, 0.5)
                            for page in result.latencies_ms
                        },
                        "rss_growth": growth[2] if growth else None,
                        "memory": [
                            [s.seconds, s.finished, s.rss_mb] for s in result.memory
                        ],
                    },
                    indent=2,
                )
            )

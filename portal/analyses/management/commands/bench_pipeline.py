from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

TARGET_RATIO = 0.9
TARGET_WORKER_OVERHEAD = 0.10


class Command(BaseCommand):
    help = (
        "Push N real BUSI images through portal services -> Redis -> a real worker -> "
        "database and compare with bare ml throughput on the same images."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--n", type=int, default=100, help="number of images (default 100)"
        )
        parser.add_argument(
            "--timeout", type=float, default=3600, help="seconds to wait"
        )
        parser.add_argument(
            "--busi-dir", default=None, help="dataset root (default BUSI_DIR)"
        )

    def handle(
        self, *args: Any, n: int, timeout: float, busi_dir: str | None, **options: Any
    ) -> None:
        # Imported here: the benchmark loads TensorFlow, the portal itself never does.
        from workers import bench

        r = bench.run(n=n, timeout=timeout, busi_dir=busi_dir, report=self.stderr.write)
        verdict = "met" if r.ratio >= TARGET_RATIO else "NOT met"
        pipeline = f"{r.pipeline_rate:.2f} images/s ({r.pipeline_seconds:.1f}s)"
        breakdown = (
            f"portal uploads (validate, store, enqueue) {r.upload_seconds:.1f}s; "
            f"worker first claim to last result {r.worker_seconds:.1f}s"
        )
        bare = f"{r.bare_rate:.2f} images/s ({r.bare_seconds:.1f}s)"
        stored = f"{r.bare_with_artifacts_rate:.2f} images/s"
        ratio = f"{r.ratio:.1%} (target >= {TARGET_RATIO:.0%}: {verdict})"
        overhead_verdict = (
            "met" if r.worker_overhead <= TARGET_WORKER_OVERHEAD else "NOT met"
        )
        overhead = (
            f"{r.worker_ms_per_scan - r.model_ms_per_scan:.1f} ms per scan beyond the "
            f"model's {r.model_ms_per_scan:.1f} ms: {r.worker_overhead:.1%} "
            f"(target <= {TARGET_WORKER_OVERHEAD:.0%}: {overhead_verdict})"
        )
        self.stdout.write(
            "\n".join(
                [
                    f"images: {r.n} (failed in pipeline: {r.pipeline_failed})",
                    f"pipeline portal -> redis -> worker -> db: {pipeline}",
                    f"  {breakdown}",
                    f"bare ml Analyzer.analyze: {bare}",
                    f"bare ml analyze + encoding the stored outputs: {stored}",
                    f"ratio pipeline / bare analyze: {ratio}",
                    f"worker time (first claim to last result) {overhead}",
                ]
            )
        )

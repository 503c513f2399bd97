from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from portal.ingest import bench


class Command(BaseCommand):
    help = (
        "POST one zip of N BUSI images to a real gunicorn web process and report the "
        "time until all are accepted and enqueued, and the web process's memory growth."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--n", type=int, default=300, help="images (default 300)")
        parser.add_argument("--busi-dir", default=None, help="default: BUSI_DIR")
        parser.add_argument(
            "--database-url",
            default=None,
            help="database for the web process (default: a fresh SQLite file)",
        )
        parser.add_argument(
            "--analyse",
            action="store_true",
            help="then run a worker and time the analyses (needs a trained model)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            r = bench.run(
                n=options["n"],
                busi_dir=options["busi_dir"],
                database_url=options["database_url"],
                analyse=options["analyse"],
                report=self.stderr.write,
            )
        except (FileNotFoundError, OSError) as exc:
            raise CommandError(str(exc)) from None
        time_ok = r.seconds < bench.TARGET_SECONDS
        memory_ok = r.memory_growth_mb < bench.TARGET_MEMORY_MB
        lines = [
            f"images: {r.n} in one zip of {r.zip_mb:.1f} MB",
            (
                f"accepted {r.accepted}, rejected {r.rejected}, messages in the queue "
                f"{r.enqueued}"
            ),
            (
                f"accepted and enqueued in {r.seconds:.1f} s ({r.n / r.seconds:.1f} images/s; "
                f"target < {bench.TARGET_SECONDS:.0f} s: {'met' if time_ok else 'NOT met'})"
            ),
            (
                f"web process memory: {r.rss_before_mb:.0f} MB before, peak "
                f"{r.rss_peak_mb:.0f} MB, growth {r.memory_growth_mb:.1f} MB (target < "
                f"{bench.TARGET_MEMORY_MB:.0f} MB: {'met' if memory_ok else 'NOT met'})"
            ),
        ]
        if r.analysed_seconds is not None:
            lines.append(
                f"analysed {r.analysed} in {r.analysed_seconds:.1f} s after the upload "
                f"({(r.analysed or 0) / r.analysed_seconds:.2f} images/s, one worker)"
            )
        self.stdout.write("\n".join(lines))

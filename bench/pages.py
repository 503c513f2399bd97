"""Page benchmark: every page a user opens, timed with a department's year of data.

In a throwaway database of the configured kind (a SQLite file or a PostgreSQL database,
created and dropped here, never the configured one) it seeds `studies` studies of
`scans` analysed scans each, most of them read and signed, then requests every page
through Django's test client, in this process, as a signed-in radiologist (who sees the
navigation's worklist count on every page), and reports p50 / p95 server time per page.
No network and no worker: what the figures show is the queries and the templates.
"""

from __future__ import annotations

import datetime
import logging
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db import connection, connections, reset_queries
from django.test.utils import override_settings

logger = logging.getLogger(__name__)

LABELS = ("normal", "benign", "malignant")
# Of every 10 studies, this many have every scan read and signed; the rest are waiting
# for a radiologist (the worklist), an unkind share for a steady department.
REVIEWED_OF_TEN = 7
BATCH = 2000
TARGET_MS = 300.0


@dataclass
class PageTimes:
    path: str
    ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    queries: int = 0

    def percentile(self, q: float) -> float:
        return _percentile(self.ms, q)

    def cpu_percentile(self, q: float) -> float:
        return _percentile(self.cpu_ms, q)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class PagesResult:
    vendor: str
    studies: int
    scans_per_study: int
    analyses: int
    reviews: int
    seed_seconds: float
    pages: dict[str, PageTimes] = field(default_factory=dict)

    def lines(self) -> list[str]:
        header = (
            f"{self.vendor}: {self.studies} studies x {self.scans_per_study} scans "
            f"({self.analyses} analyses, {self.reviews} signed reviews), seeded in "
            f"{self.seed_seconds:.0f}s"
        )
        columns = (
            f"{'page':<36} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} "
            f"{'cpu p50':>8} {'cpu p95':>8} {'queries':>8}"
        )
        out = [header, columns]
        for name, page in self.pages.items():
            p95 = page.percentile(0.95)
            flag = "" if p95 < TARGET_MS else f"  over {TARGET_MS:.0f} ms"
            out.append(
                f"{name:<36} {statistics.median(page.ms):>8.1f} {p95:>8.1f} "
                f"{max(page.ms):>8.1f} {statistics.median(page.cpu_ms):>8.1f} "
                f"{page.cpu_percentile(0.95):>8.1f} {page.queries:>8}{flag}"
            )
        out.append(
            "wall: elapsed per request; cpu: this process's CPU time per request "
            "(SQLite runs in it; PostgreSQL's own work is not counted)"
        )
        return out

    def figures(self) -> dict[str, Any]:
        return {
            "vendor": self.vendor,
            "studies": self.studies,
            "scans_per_study": self.scans_per_study,
            "pages": {
                name: {
                    "path": page.path,
                    "p50_ms": statistics.median(page.ms),
                    "p95_ms": page.percentile(0.95),
                    "max_ms": max(page.ms),
                    "cpu_p50_ms": statistics.median(page.cpu_ms),
                    "cpu_p95_ms": page.cpu_percentile(0.95),
                    "queries": page.queries,
                    "requests": len(page.ms),
                }
                for name, page in self.pages.items()
            },
        }


def _batches(rows: Iterator[Any], size: int = BATCH) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def seed(
    *,
    studies: int,
    scans_per_study: int,
    user: Any,
    model_version: str,
    report: Callable[[str], None],
) -> tuple[int, int]:
    """A year of studies, 4 per patient, each with its analysed scans; returns
    (analyses, signed reviews). Most analyses succeeded, a few failed, the newest few
    are queued or running; REVIEWED_OF_TEN in 10 studies are fully read and signed."""
    from django.db import transaction
    from django.utils import timezone

    from portal.analyses.models import Analysis
    from portal.clinical.models import Patient, Scan, Study
    from portal.review.models import Review

    rng = random.Random(11)
    now = timezone.now()
    year_ago = now - datetime.timedelta(days=365)
    step = datetime.timedelta(days=365) / max(studies, 1)
    Status = Analysis.Status

    with transaction.atomic():
        patients = Patient.objects.bulk_create(
            (
                Patient(identifier=f"BP-{i:06d}", name=f"Bench Patient {i}")
                for i in range((studies + 3) // 4)
            ),
            batch_size=BATCH,
        )
        made: list[Study] = []
        for batch in _batches(
            Study(
                patient=patients[i // 4],
                created_by=user,
                accession_number=f"BA{i:07d}",
                study_date=(year_ago + step * i).date(),
                description="page benchmark",
            )
            for i in range(studies)
        ):
            made.extend(Study.objects.bulk_create(batch))
    report(f"  {len(made)} studies")

    analyses = reviews = 0
    total = studies * scans_per_study
    for first in range(0, studies, max(1, BATCH // scans_per_study)):
        chunk = made[first : first + max(1, BATCH // scans_per_study)]
        with transaction.atomic():
            scans = Scan.objects.bulk_create(
                Scan(
                    study=study,
                    original=f"scans/{study.pk}/bench-{study.pk}-{n}.png",
                    original_filename=f"image-{n}.png",
                    sha256=f"{study.pk:032d}{n:032d}",
                    width=800,
                    height=600,
                    format="PNG",
                    uploaded_by=user,
                    uploaded_at=year_ago + step * (study_index + first) + n * _SECOND,
                )
                for study_index, study in enumerate(chunk)
                for n in range(scans_per_study)
            )
            rows = []
            for scan in scans:
                position = analyses + len(rows)
                status = Status.SUCCEEDED
                if position >= total - 20:
                    status = Status.QUEUED if position < total - 2 else Status.RUNNING
                elif rng.random() < 0.005:
                    status = Status.FAILED
                label = rng.choice(LABELS) if status == Status.SUCCEEDED else ""
                malignant = rng.random()
                rows.append(
                    Analysis(
                        scan=scan,
                        model_version=model_version,
                        status=status,
                        attempts=1 if status != Status.QUEUED else 0,
                        queued_at=scan.uploaded_at,
                        started_at=scan.uploaded_at
                        if status != Status.QUEUED
                        else None,
                        finished_at=(
                            scan.uploaded_at
                            if status in (Status.SUCCEEDED, Status.FAILED)
                            else None
                        ),
                        error="the model could not read it" * (status == Status.FAILED),
                        label=label,
                        confidence=0.5 + rng.random() / 2 if label else None,
                        probabilities=(
                            {
                                "normal": (1 - malignant) / 2,
                                "benign": (1 - malignant) / 2,
                                "malignant": malignant,
                            }
                            if label
                            else None
                        ),
                        lesion_area_fraction=rng.random() / 5 if label else None,
                    )
                )
            Analysis.objects.bulk_create(rows)
            analyses += len(rows)
            signed = [
                Review(
                    scan_id=analysis.scan_id,
                    analysis=analysis,
                    version=1,
                    agrees_with_model=True,
                    label=analysis.label,
                    birads="2",
                    author=user,
                    signed_at=analysis.finished_at,
                )
                for analysis in rows
                if analysis.status == Status.SUCCEEDED
                and (analysis.scan.study_id - made[0].pk) % 10 < REVIEWED_OF_TEN
            ]
            Review.objects.bulk_create(signed)
            reviews += len(signed)
        if (first // max(1, BATCH // scans_per_study)) % 20 == 0:
            report(f"  {analyses}/{total} analysed scans")
    analyze_after_bulk_load()
    # What the workers' and reviewers' services keep as they go: the worklist columns
    # and the agreement monitor's counts.
    from portal.review.services import agreement_counts_rebuild, studies_review_refresh

    studies_review_refresh(studies=Study.objects.all())
    agreement_counts_rebuild()
    return analyses, reviews


_SECOND = datetime.timedelta(seconds=1)


def analyze_after_bulk_load() -> None:
    """On PostgreSQL, what autovacuum does within a minute of a bulk load: without
    statistics it plans a refresh over the seeded rows as if the tables were empty
    (minutes instead of a second at 10,000 studies). SQLite has no such thing: its
    planner works without statistics, as a clinic's would."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")


def _pages(rng: random.Random) -> dict[str, Callable[[], str]]:
    from portal.clinical.models import Scan, Study

    ids = list(Study.objects.values_list("pk", flat=True))
    scan_ids = list(
        Scan.objects.filter(study_id__in=rng.sample(ids, min(200, len(ids))))
        .filter(analyses__status="succeeded")
        .values_list("pk", flat=True)
    )
    patient = Study.objects.filter(pk=rng.choice(ids)).values_list(
        "patient__identifier", flat=True
    )[0]
    return {
        "dashboard": lambda: "/dashboard/",
        "dashboard, page 100": lambda: "/dashboard/?page=100",
        "dashboard, unreviewed malignant": lambda: (
            "/dashboard/?review=unreviewed&label=malignant"
        ),
        "dashboard, search a patient": lambda: f"/dashboard/?q={patient}",
        "worklist": lambda: "/worklist/",
        "worklist, page 20": lambda: "/worklist/?page=20",
        "study page": lambda: f"/studies/{rng.choice(ids)}/",
        "study status poll": lambda: f"/studies/{rng.choice(ids)}/status.json",
        "review page": lambda: f"/scans/{rng.choice(scan_ids)}/review/",
        "review page, reading the worklist": lambda: (
            f"/scans/{rng.choice(scan_ids)}/review/?flow=worklist"
        ),
        "patients": lambda: "/patients/",
        "agreement monitor": lambda: "/agreement/",
        "API study list": lambda: "/api/v1/studies/",
        "API study list, next page": lambda: _api_next_page("/api/v1/studies/"),
        "API patient list": lambda: "/api/v1/patients/",
        "API study": lambda: f"/api/v1/studies/{rng.choice(ids)}/",
    }


_next_pages: dict[str, str] = {}


def _api_next_page(first: str) -> str:
    """The second page of an API list (its keyset cursor), found once."""
    if first not in _next_pages:
        from django.contrib.auth import get_user_model
        from django.test import Client

        client = Client(HTTP_HOST="localhost")
        client.force_login(get_user_model().objects.get(username="bench-radiologist"))
        _next_pages[first] = client.get(first).json()["next"]
    return _next_pages[first]


def _time_nav_count(result: PagesResult, requests: int) -> None:
    """The navigation's count alone (every page of a radiologist runs it)."""
    from portal.review.selectors import worklist_count

    times = PageTimes(path="(navigation worklist count)")
    for _ in range(requests):
        started, cpu = time.perf_counter(), time.process_time()
        worklist_count()
        times.ms.append((time.perf_counter() - started) * 1000)
        times.cpu_ms.append((time.process_time() - cpu) * 1000)
    result.pages["navigation count (query alone)"] = times


def measure(result: PagesResult, *, requests: int, user: Any) -> None:
    from django.test import Client

    rng = random.Random(5)
    client = Client(HTTP_HOST="localhost")  # in ALLOWED_HOSTS by default
    client.force_login(user)
    pages = _pages(rng)
    for name, path in pages.items():  # untimed: templates compiled, caches warm
        response = client.get(path())
        if response.status_code != 200:
            raise RuntimeError(f"{name}: {path()} answered {response.status_code}")
    _time_nav_count(result, requests)
    for name, path in pages.items():
        times = PageTimes(path=path())
        for _ in range(requests):
            url = path()
            started, cpu = time.perf_counter(), time.process_time()
            response = client.get(url)
            times.ms.append((time.perf_counter() - started) * 1000)
            times.cpu_ms.append((time.process_time() - cpu) * 1000)
            if response.status_code != 200:
                raise RuntimeError(f"{name}: {url} answered {response.status_code}")
        with override_settings(DEBUG=True):
            reset_queries()
            client.get(path())
            times.queries = len(connection.queries)
        result.pages[name] = times


def run(
    *,
    studies: int,
    scans_per_study: int,
    requests: int,
    report: Callable[[str], None],
) -> PagesResult:
    from portal.accounts.roles import RADIOLOGIST, assign_role
    from portal.review.models import Review

    work_dir = Path(tempfile.mkdtemp(prefix="bench-pages-"))
    old_name = connection.settings_dict["NAME"]
    test_settings = connection.settings_dict.setdefault("TEST", {})
    old_test_name = test_settings.get("NAME")
    if connection.vendor == "sqlite":
        test_settings["NAME"] = str(work_dir / "bench.sqlite3")
    report(f"creating a throwaway {connection.vendor} database (migrations)")
    connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    try:
        from django.contrib.auth import get_user_model

        user = get_user_model().objects.create_user(
            "bench-radiologist", password="bench-pages-password-4412"
        )
        assign_role(user, RADIOLOGIST)
        report(f"seeding {studies} studies x {scans_per_study} analysed scans")
        started = time.monotonic()
        analyses, _ = seed(
            studies=studies,
            scans_per_study=scans_per_study,
            user=user,
            model_version="bench-model-1",
            report=report,
        )
        if connection.vendor == "postgresql":
            # And the vacuum autovacuum would do: index-only scans need the visibility
            # map it writes.
            with connection.cursor() as cursor:
                cursor.execute("VACUUM ANALYZE")
        result = PagesResult(
            vendor=connection.vendor,
            studies=studies,
            scans_per_study=scans_per_study,
            analyses=analyses,
            reviews=Review.objects.count(),
            seed_seconds=time.monotonic() - started,
        )
        report(f"requesting every page {requests} times")
        measure(result, requests=requests, user=user)
        return result
    finally:
        connections.close_all()
        try:
            connection.creation.destroy_test_db(old_name, verbosity=0)
        except Exception:
            logger.warning("could not drop the benchmark database", exc_info=True)
        if old_test_name is None:
            test_settings.pop("NAME", None)
        else:
            test_settings["NAME"] = old_test_name
        shutil.rmtree(work_dir, ignore_errors=True)

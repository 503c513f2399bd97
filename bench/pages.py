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
import html
import json
import logging
import math
import random
import re
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.core.management.color import no_style
from django.db import connection, connections, reset_queries
from django.db.models import JSONField, Model
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
        seeded = (
            "seeded by an earlier run"
            if math.isnan(self.seed_seconds)
            else f"seeded in {self.seed_seconds:.0f}s"
        )
        header = (
            f"{self.vendor}: {self.studies} studies x {self.scans_per_study} scans "
            f"({self.analyses} analyses, {self.reviews} signed reviews), {seeded}"
        )
        columns = (
            f"{'page':<46} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} "
            f"{'cpu p50':>8} {'cpu p95':>8} {'queries':>8}"
        )
        out = [header, columns]
        for name, page in self.pages.items():
            p95 = page.percentile(0.95)
            flag = "" if p95 < TARGET_MS else f"  over {TARGET_MS:.0f} ms"
            out.append(
                f"{name:<46} {statistics.median(page.ms):>8.1f} {p95:>8.1f} "
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
            "analyses": self.analyses,
            "reviews": self.reviews,
            "seed_seconds": None
            if math.isnan(self.seed_seconds)
            else self.seed_seconds,
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


def _batches(rows: Iterable[Any], size: int = BATCH) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass(frozen=True)
class _Plan:
    """What seed() writes, row by row, the same on every database: ids are given
    (the tables are empty but for `first` ids), so scans, analyses and reviews are
    streams that never wait for the database to name a row."""

    studies: int
    scans_per_study: int
    user_id: int
    model_version: str
    now: datetime.datetime
    first: dict[str, int]

    @property
    def patients(self) -> int:
        return (self.studies + 3) // 4

    @property
    def total(self) -> int:
        return self.studies * self.scans_per_study

    def uploaded_at(self, study_index: int, n: int) -> datetime.datetime:
        year_ago = self.now - datetime.timedelta(days=365)
        step = datetime.timedelta(days=365) / max(self.studies, 1)
        return year_ago + step * study_index + n * _SECOND

    def patient_rows(self) -> Iterator[tuple[Any, ...]]:
        first = self.first["patient"]
        for i in range(self.patients):
            yield first + i, f"BP-{i:06d}", f"Bench Patient {i}", self.now

    def study_rows(self) -> Iterator[tuple[Any, ...]]:
        first, patient = self.first["study"], self.first["patient"]
        year_ago = self.now - datetime.timedelta(days=365)
        step = datetime.timedelta(days=365) / max(self.studies, 1)
        for i in range(self.studies):
            yield (
                first + i,
                patient + i // 4,
                self.user_id,
                f"BA{i:07d}",
                (year_ago + step * i).date(),
                SEED_MARK,
                self.now,
            )

    def scan_rows(self) -> Iterator[tuple[Any, ...]]:
        first, study = self.first["scan"], self.first["study"]
        for position in range(self.total):
            i, n = divmod(position, self.scans_per_study)
            study_id = study + i
            yield (
                first + position,
                uuid.uuid4(),
                study_id,
                f"scans/{study_id}/bench-{study_id}-{n}.png",
                f"image-{n}.png",
                f"{study_id:032d}{n:032d}",
                800,
                600,
                "PNG",
                self.user_id,
                self.uploaded_at(i, n),
            )

    def analysis_rows(self) -> Iterator[tuple[Any, ...]]:
        """Most analyses succeeded, a few failed, the newest 20 are queued or running."""
        rng = random.Random(11)
        first, scan = self.first["analysis"], self.first["scan"]
        for position in range(self.total):
            i, n = divmod(position, self.scans_per_study)
            status = SUCCEEDED
            if position >= self.total - 20:
                status = QUEUED if position < self.total - 2 else RUNNING
            elif rng.random() < 0.005:
                status = FAILED
            # Of the results: 1 in 500 withheld (not a breast ultrasound: no verdict),
            # 3 in 100 outside the training distribution, a fifth suspicious.
            finished = status == SUCCEEDED
            withheld = finished and rng.random() < 0.002
            verdict = finished and not withheld
            label = rng.choice(LABELS) if verdict else ""
            malignant = rng.random()
            at = self.uploaded_at(i, n)
            yield (
                first + position,
                scan + position,
                self.model_version,
                status,
                1 if status != QUEUED else 0,
                at,
                at if status != QUEUED else None,
                at if status in (SUCCEEDED, FAILED) else None,
                "the model could not read it" * (status == FAILED),
                label,
                0.5 + rng.random() / 2 if verdict else None,
                (
                    {
                        "normal": (1 - malignant) / 2,
                        "benign": (1 - malignant) / 2,
                        "malignant": malignant,
                    }
                    if verdict
                    else None
                ),
                rng.random() / 5 if verdict else None,
                withheld,
                (rng.random() >= 0.03) if verdict else None,
                (malignant >= SUSPICIOUS_AT) if verdict else None,
                SUSPICIOUS_AT if verdict else None,
            )

    def review_rows(self) -> Iterator[tuple[Any, ...]]:
        """A signed reading of every succeeded analysis of REVIEWED_OF_TEN studies in 10."""
        first = self.first["review"]
        made = 0
        for row in self.analysis_rows():
            analysis_id, scan_id, finished, label = row[0], row[1], row[7], row[9]
            study_index = (scan_id - self.first["scan"]) // self.scans_per_study
            if not label or study_index % 10 >= REVIEWED_OF_TEN:
                continue  # unfinished, withheld (no verdict to read), or still waiting
            yield (
                first + made,
                scan_id,
                analysis_id,
                1,
                True,
                label,
                "2",
                self.user_id,
                finished,
                finished,
                finished,
            )
            made += 1


PATIENT_COLUMNS = ("id", "identifier", "name", "created_at")
STUDY_COLUMNS = (
    "id",
    "patient_id",
    "created_by_id",
    "accession_number",
    "study_date",
    "description",
    "created_at",
)
SCAN_COLUMNS = (
    "id",
    "uuid",
    "study_id",
    "original",
    "original_filename",
    "sha256",
    "width",
    "height",
    "format",
    "uploaded_by_id",
    "uploaded_at",
)
ANALYSIS_COLUMNS = (
    "id",
    "scan_id",
    "model_version",
    "status",
    "attempts",
    "queued_at",
    "started_at",
    "finished_at",
    "error",
    "label",
    "confidence",
    "probabilities",
    "lesion_area_fraction",
    "withheld",
    "in_distribution",
    "suspicious",
    "operating_threshold",
)
REVIEW_COLUMNS = (
    "id",
    "scan_id",
    "analysis_id",
    "version",
    "agrees_with_model",
    "label",
    "birads",
    "author_id",
    "created_at",
    "updated_at",
    "signed_at",
)


def _other_columns(model: type[Model], given: tuple[str, ...]) -> dict[str, Any]:
    """Every column of `model` not in `given`, with the value its field's default
    gives (the database knows none of Django's defaults). A column left without one,
    or a unique one, is refused rather than filled with a guess."""
    others: dict[str, Any] = {}
    for column_field in model._meta.concrete_fields:
        if column_field.attname in given:
            continue
        if column_field.primary_key or (column_field.unique and not column_field.null):
            raise ValueError(
                f"{model.__name__}.{column_field.name} needs a value per row"
            )
        if column_field.unique:
            value = None  # NULLs never collide
        elif column_field.has_default():
            value = column_field.get_default()
        elif column_field.null:
            value = None
        elif column_field.blank and column_field.empty_strings_allowed:
            value = ""
        else:
            raise ValueError(f"{model.__name__}.{column_field.name} has no default")
        others[column_field.column] = column_field.get_db_prep_save(value, connection)
    return others


def _copy(model: type[Model], given: tuple[str, ...], rows: Iterable[tuple]) -> int:
    """Rows into `model`'s table with PostgreSQL's COPY (psycopg 3), the columns not
    given filled with their defaults; returns how many."""
    others = _other_columns(model, given)
    columns = [model._meta.get_field(name).column for name in given] + list(others)
    tail = tuple(others.values())
    # JSON goes in as its text; everything else as psycopg writes the Python value.
    json_at = [
        index
        for index, name in enumerate(given)
        if isinstance(model._meta.get_field(name), JSONField)
    ]
    quote = connection.ops.quote_name
    statement = (
        f"COPY {quote(model._meta.db_table)} "
        f"({', '.join(quote(column) for column in columns)}) FROM STDIN"
    )
    written = 0
    with connection.cursor() as cursor, cursor.cursor.copy(statement) as copy:
        for row in rows:
            if json_at:
                row = tuple(
                    json.dumps(value)
                    if index in json_at and value is not None
                    else value
                    for index, value in enumerate(row)
                )
            copy.write_row(row + tail)
            written += 1
    return written


def _bulk(model: type[Model], given: tuple[str, ...], rows: Iterable[tuple]) -> int:
    """The same through the ORM in batches: SQLite, which has no COPY."""
    written = 0
    for batch in _batches(rows):
        model.objects.bulk_create(model(**dict(zip(given, row))) for row in batch)
        written += len(batch)
    return written


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
    are queued or running; REVIEWED_OF_TEN in 10 studies are fully read and signed.

    On PostgreSQL the rows go in with COPY (a million analyses in minutes, where the
    ORM's bulk inserts took 17 minutes for 100,000 on a loaded machine); elsewhere
    through bulk_create. Then the columns and counts the services keep as they go are
    computed by those services, as a repair would."""
    from django.db import transaction
    from django.db.models import Max
    from django.utils import timezone

    from portal.analyses.models import Analysis
    from portal.clinical.models import Patient, Scan, Study
    from portal.review.models import Review

    tables = {
        "patient": (Patient, PATIENT_COLUMNS),
        "study": (Study, STUDY_COLUMNS),
        "scan": (Scan, SCAN_COLUMNS),
        "analysis": (Analysis, ANALYSIS_COLUMNS),
        "review": (Review, REVIEW_COLUMNS),
    }
    plan = _Plan(
        studies=studies,
        scans_per_study=scans_per_study,
        user_id=user.pk,
        model_version=model_version,
        now=timezone.now(),
        first={
            name: (model.objects.aggregate(top=Max("pk"))["top"] or 0) + 1
            for name, (model, _) in tables.items()
        },
    )
    write = _copy if connection.vendor == "postgresql" else _bulk
    streams = {
        "patient": plan.patient_rows,
        "study": plan.study_rows,
        "scan": plan.scan_rows,
        "analysis": plan.analysis_rows,
        "review": plan.review_rows,
    }
    written: dict[str, int] = {}
    with transaction.atomic():
        for name, (model, columns) in tables.items():
            started = time.monotonic()
            written[name] = write(model, columns, streams[name]())
            report(
                f"  {written[name]} {model._meta.verbose_name_plural} "
                f"({time.monotonic() - started:.0f}s)"
            )
        if connection.vendor == "postgresql":
            # The ids were given: the sequences start after them.
            with connection.cursor() as cursor:
                for sql in connection.ops.sequence_reset_sql(
                    no_style(), [model for model, _ in tables.values()]
                ):
                    cursor.execute(sql)
    analyze_after_bulk_load()
    # What the workers' and reviewers' services keep as they go: the worklist columns
    # and the agreement monitor's counts.
    from portal.review.services import agreement_counts_rebuild, studies_review_refresh

    started = time.monotonic()
    studies_review_refresh(studies=Study.objects.all())
    agreement_counts_rebuild()
    report(
        f"  worklist columns and agreement counts ({time.monotonic() - started:.0f}s)"
    )
    return written["analysis"], written["review"]


_SECOND = datetime.timedelta(seconds=1)
SUCCEEDED, FAILED, QUEUED, RUNNING = "succeeded", "failed", "queued", "running"
# Every seeded study's description: a kept database seeded by another recipe is
# seeded again (change it with the recipe).
SEED_MARK = "page benchmark, seed 2"
# The site's operating threshold on p(malignant) in the seed: a fifth are suspicious.
SUSPICIOUS_AT = 0.8


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
    middle = Study.objects.get(pk=ids[len(ids) // 2]).study_date
    month = (middle, middle + datetime.timedelta(days=30))
    return {
        "dashboard": lambda: "/dashboard/",
        "dashboard, 100 pages in": lambda: _followed("/dashboard/", "next", 99),
        "dashboard, 100 pages in, then newer": lambda: _followed(
            _followed("/dashboard/", "next", 99), "prev", 1
        ),
        "dashboard, unreviewed malignant": lambda: (
            "/dashboard/?review=unreviewed&label=malignant"
        ),
        "dashboard, unreviewed malignant, 20 pages in": lambda: _followed(
            "/dashboard/?review=unreviewed&label=malignant", "next", 19
        ),
        "dashboard, search a patient": lambda: f"/dashboard/?q={patient}",
        # A term most patients' names hold: the search's matches are most studies.
        "dashboard, broad search (most patients)": lambda: "/dashboard/?q=Bench",
        "dashboard, one patient (hospital id)": lambda: (
            f"/dashboard/?patient={patient}"
        ),
        "dashboard, a month of studies": lambda: (
            f"/dashboard/?date_from={month[0]}&date_to={month[1]}"
        ),
        "dashboard, failed": lambda: "/dashboard/?status=failed",
        "dashboard, reviewed, confidence 90-100%": lambda: (
            "/dashboard/?review=reviewed&confidence_min=90&confidence_max=100"
        ),
        "dashboard, model version": lambda: "/dashboard/?model_version=bench-model-1",
        "dashboard, outside the training distribution": lambda: (
            "/dashboard/?distribution=outside"
        ),
        "dashboard, withheld": lambda: "/dashboard/?distribution=withheld",
        "worklist": lambda: "/worklist/",
        "worklist, 20 pages in": lambda: _followed("/worklist/", "next", 19),
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
        "API study list, unreviewed malignant": lambda: (
            "/api/v1/studies/?review=unreviewed&label=malignant"
        ),
        "API study list, search a patient": lambda: f"/api/v1/studies/?q={patient}",
        "API study list, broad search (most patients)": lambda: (
            "/api/v1/studies/?q=Bench"
        ),
        "API patient list": lambda: "/api/v1/patients/",
        "API patient list, search": lambda: f"/api/v1/patients/?search={patient}",
        "API study": lambda: f"/api/v1/studies/{rng.choice(ids)}/",
    }


_next_pages: dict[str, str] = {}
_followed_links: dict[tuple[str, str, int], str] = {}


def _client() -> Any:
    from django.contrib.auth import get_user_model
    from django.test import Client

    client = Client(HTTP_HOST="localhost")
    client.force_login(get_user_model().objects.get(username="bench-radiologist"))
    return client


def _followed(start: str, rel: str, times: int) -> str:
    """Where following a page's rel="next" (or "prev") link `times` times leads, as
    a reader clicking "Older" would get there; found once, untimed."""
    key = (start, rel, times)
    if key not in _followed_links:
        client, url = _client(), start
        for _ in range(times):
            page = client.get(url).content.decode()
            found = re.search(rf'<a href="(\?[^"]*)" rel="{rel}">', page)
            if found is None:
                raise RuntimeError(f"{url}: no {rel} link to follow")
            url = start.split("?")[0] + html.unescape(found.group(1))
        _followed_links[key] = url
    return _followed_links[key]


def _api_next_page(first: str) -> str:
    """The second page of an API list (its keyset cursor), found once."""
    if first not in _next_pages:
        _next_pages[first] = _client().get(first).json()["next"]
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


def measure(result: PagesResult, *, requests: int, user: Any, only: str = "") -> None:
    """Every page (or those whose name contains `only`), `requests` times each."""
    from django.test import Client

    rng = random.Random(5)
    client = Client(HTTP_HOST="localhost")  # in ALLOWED_HOSTS by default
    client.force_login(user)
    pages = {
        name: path for name, path in _pages(rng).items() if only.lower() in name.lower()
    }
    if not pages:
        raise ValueError(f"no page's name contains {only!r}")
    for name, path in pages.items():  # untimed: templates compiled, caches warm
        response = client.get(path())
        if response.status_code != 200:
            raise RuntimeError(f"{name}: {path()} answered {response.status_code}")
    if not only:
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


def _bench_database_name(keep: bool, work_dir: Path) -> str:
    """Never the configured database, nor the test suite's (test_<name>)."""
    if connection.vendor == "sqlite":
        directory = Path(tempfile.gettempdir()) if keep else work_dir
        return str(directory / "bench-pages.sqlite3")
    return f"{connection.settings_dict['NAME']}_bench_pages"


def _holds_seed(studies: int, scans_per_study: int) -> bool:
    from portal.analyses.models import Analysis
    from portal.clinical.models import Study

    return (
        Study.objects.filter(description=SEED_MARK).count() == studies
        and Study.objects.count() == studies
        and Analysis.objects.count() == studies * scans_per_study
    )


def _holds_rows() -> bool:
    from portal.clinical.models import Study

    return Study.objects.exists()


def run(
    *,
    studies: int,
    scans_per_study: int,
    requests: int,
    report: Callable[[str], None],
    keep: bool = False,
    only: str = "",
) -> PagesResult:
    """With `keep`, the database stays after the run, and a later run with the same
    size finds it seeded (migrations still applied): to try a change on a million rows
    without seeding them again. Drop it with `dropdb` (or delete the SQLite file)."""
    from django.contrib.auth import get_user_model

    from portal.accounts.roles import RADIOLOGIST, assign_role
    from portal.review.models import Review

    work_dir = Path(tempfile.mkdtemp(prefix="bench-pages-"))
    old_name = connection.settings_dict["NAME"]
    test_settings = connection.settings_dict.setdefault("TEST", {})
    old_test_name = test_settings.get("NAME")
    test_settings["NAME"] = _bench_database_name(keep, work_dir)
    report(
        f"{'using' if keep else 'creating'} a throwaway {connection.vendor} database "
        f"{test_settings['NAME']} (migrations)"
    )
    connection.creation.create_test_db(
        verbosity=0, autoclobber=True, serialize=False, keepdb=keep
    )
    try:
        started = time.monotonic()
        if keep and _holds_seed(studies, scans_per_study):
            report("already seeded at this size: not seeding again")
            user = get_user_model().objects.get(username="bench-radiologist")
            analyses = studies * scans_per_study
            seed_seconds = float("nan")
        else:
            if keep and _holds_rows():
                report("emptying it to seed at this size")
                connection.creation.destroy_test_db(old_name, verbosity=0, keepdb=False)
                connection.creation.create_test_db(
                    verbosity=0, autoclobber=True, serialize=False
                )
            user = get_user_model().objects.create_user(
                "bench-radiologist", password="bench-pages-password-4412"
            )
            assign_role(user, RADIOLOGIST)
            report(f"seeding {studies} studies x {scans_per_study} analysed scans")
            analyses, _ = seed(
                studies=studies,
                scans_per_study=scans_per_study,
                user=user,
                model_version="bench-model-1",
                report=report,
            )
            if connection.vendor == "postgresql":
                # And the vacuum autovacuum would do: index-only scans need the
                # visibility map it writes.
                with connection.cursor() as cursor:
                    cursor.execute("VACUUM ANALYZE")
            seed_seconds = time.monotonic() - started
        result = PagesResult(
            vendor=connection.vendor,
            studies=studies,
            scans_per_study=scans_per_study,
            analyses=analyses,
            reviews=Review.objects.count(),
            seed_seconds=seed_seconds,
        )
        report(f"requesting every page {requests} times")
        measure(result, requests=requests, user=user, only=only)
        return result
    finally:
        connections.close_all()
        if not keep:
            try:
                connection.creation.destroy_test_db(old_name, verbosity=0)
            except Exception:
                logger.warning("could not drop the benchmark database", exc_info=True)
        else:
            connection.settings_dict["NAME"] = old_name
        if old_test_name is None:
            test_settings.pop("NAME", None)
        else:
            test_settings["NAME"] = old_test_name
        shutil.rmtree(work_dir, ignore_errors=True)

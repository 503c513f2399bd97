"""Reads for the dashboard, the worklist, the review page and the agreement monitor.

Every list here is built as a fixed number of SQL queries, whatever the number of rows:
per-row facts (reviewed or not, most suspicious probability) are subqueries or
aggregates, never a query per row.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from django.db import connection
from django.db.models import (
    Case,
    CharField,
    Count,
    DateField,
    Exists,
    F,
    FloatField,
    IntegerField,
    Max,
    Model,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
    When,
)
from django.db.models.expressions import Col
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Coalesce, TruncMonth
from django.utils import timezone

from portal.analyses.models import Analysis
from portal.clinical.models import Pathology, Patient, Scan, Study
from portal.clinical.selectors import study_scan_count
from portal.keyset import cursor_decode, cursor_encode, keyset_beyond
from portal.review.models import AgreementCount, OutlineState, Review

Status = Analysis.Status
LABELS = tuple(Analysis.Label.values)
STATUSES = tuple(Status.values)


def signed_reviews() -> QuerySet[Review]:
    return Review.objects.filter(signed_at__isnull=False)


def current_signed_reviews() -> QuerySet[Review]:
    """Signed reviews not replaced by a signed amendment: what a scan's reading is now."""
    return signed_reviews().exclude(amended_by__signed_at__isnull=False)


# Where a scan's ground truth comes from: the `truth_origin` of with_ground_truth.
LESION_BIOPSY, STUDY_BIOPSY, READER = "lesion", "study", "reader"


def with_ground_truth(reviews: QuerySet[Review]) -> QuerySet[Review]:
    """The reviews, each annotated with its scan's ground truth (`truth`: normal, benign
    or malignant) and where it comes from (`truth_origin`): the biopsy outcome of the
    lesion the scan is in where one is recorded, else the study's biopsy outcome, else
    the review's signed label.

    The one rule for the site calibration's reads and the training export: written in
    the query (two joins), never read row by row.
    """
    lesion = Q(scan__lesion__pathology__in=Pathology.values)
    study = Q(scan__study__pathology__in=Pathology.values)
    return reviews.annotate(
        truth=Case(
            When(lesion, then=F("scan__lesion__pathology")),
            When(study, then=F("scan__study__pathology")),
            default=F("label"),
            output_field=CharField(),
        ),
        truth_origin=Case(
            When(lesion, then=Value(LESION_BIOPSY)),
            When(study, then=Value(STUDY_BIOPSY)),
            default=Value(READER),
            output_field=CharField(),
        ),
    )


def _scan_is_reviewed(scan_ref: str = "scan_id") -> Exists:
    return Exists(signed_reviews().filter(scan_id=OuterRef(scan_ref)))


# --- dashboard ----------------------------------------------------------------------


@dataclass(frozen=True)
class DashboardFilters:
    patient: str = ""
    date_from: datetime.date | None = None
    date_to: datetime.date | None = None
    label: str = ""
    # 0..1: kept from confidence_min (inclusive), up to confidence_max (exclusive).
    confidence_min: float | None = None
    confidence_max: float | None = None
    review: str = ""  # "reviewed" | "unreviewed" | ""
    status: str = ""
    model_version: str = ""
    search: str = ""
    # "outside" | "inside" the training distribution | "" (results of models that cannot
    # tell, in_distribution None, match neither). "withheld": not a breast ultrasound.
    distribution: str = ""
    # Whether `search` matches many patients or accession numbers (search_is_broad),
    # where it was read with the filters (filter_facts); None: read when it is needed.
    search_broad: bool | None = None


def _study_dates(filters: DashboardFilters, *, prefix: str = "") -> Q:
    """The study date range, on a study (or a path to one: `prefix`)."""
    dates = Q()
    if filters.date_from:
        dates &= Q(**{f"{prefix}study_date__gte": filters.date_from})
    if filters.date_to:
        dates &= Q(**{f"{prefix}study_date__lte": filters.date_to})
    return dates


def _study_conditions(filters: DashboardFilters) -> Q:
    """The filters on a study and its patient but the search (_search_matches), as
    conditions on studies."""
    conditions = Q()
    if filters.patient:
        conditions &= Q(patient__identifier__iexact=filters.patient)
    conditions &= _study_dates(filters)
    return conditions


class JoinedPk(F):
    """The primary key of the table a relation path joins, read from that table.

    F("scan__id") is read from the foreign key (analysis.scan_id): the same value, but
    ordering by it keeps SQLite from walking the scan_uploaded index (uploaded_at, id)
    backwards, so it sorted every analysis to show 50 (a second at 10,000 studies).
    `name` is any column path into the joined table ("scan__uploaded_at").
    """

    def resolve_expression(self, *args: Any, **kwargs: Any) -> Col:
        column = super().resolve_expression(*args, **kwargs)
        return Col(column.alias, column.target.model._meta.pk)


def _dashboard_row() -> QuerySet[Analysis]:
    return Analysis.objects.select_related("scan__study__patient").annotate(
        reviewed=_scan_is_reviewed()
    )


@dataclass(frozen=True)
class DashboardOrder:
    """An order of the dashboard's rows: its keys (each direction the same, the last
    unique) as the walk reads them, and the cursor's values, one per key."""

    name: str
    title: str  # as the page says it, after "N rows, "
    # One per key: (the ORDER BY expression, its path for keyset_beyond and for a
    # row's cursor value, the model and field that read it back from a cursor).
    keys: tuple[tuple[Any, str, type[Model], str], ...]

    def by(self, *, descending: bool = True, few: bool = False) -> tuple[Any, ...]:
        """The ORDER BY, newest first (`descending`) or the walk back up. `few`: the
        first key through an expression of the same value that no index provides,
        so that the few matching rows are read from their filter's index and sorted
        (a top-N sort) rather than met by walking this order (see _picked)."""
        exprs = [key[0] for key in self.keys]
        if few:
            first = self.keys[0][1]
            exprs[0] = Coalesce(F(first), F(first))
        return tuple(e.desc() if descending else e.asc() for e in exprs)

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(key[1] for key in self.keys)

    def fields(self) -> list[Any]:
        return [model._meta.get_field(name) for _, _, model, name in self.keys]

    def cursor_at(self, row: Analysis) -> str:
        values = []
        for path in self.paths:
            value: Any = row
            for part in path.split("__"):
                value = getattr(value, part)
            values.append(value)
        return cursor_encode(values)


# Newest upload first: the upload time, then the scan, then the analysis, so that rows
# with equal times still have one order (the scan_uploaded index drives the walk).
UPLOAD_ORDER = DashboardOrder(
    name="upload",
    title="newest upload first",
    keys=(
        (F("scan__uploaded_at"), "scan__uploaded_at", Scan, "uploaded_at"),
        (JoinedPk("scan__uploaded_at"), "scan_id", Scan, "id"),
        (F("id"), "id", Analysis, "id"),
    ),
)

# Where a range of study dates is set: newest study first (by its date, then its id:
# the study_date index drives the walk and stops after a page's studies), then each
# study's newest upload. In the upload order the page first had to find where the
# range's uploads begin: the newest upload of every study in the range, one index
# probe per study (17,000 for a month at a million analyses).
STUDY_ORDER = DashboardOrder(
    name="study",
    title="newest study first, then its newest upload",
    keys=(
        (F("scan__study__study_date"), "scan__study__study_date", Study, "study_date"),
        (JoinedPk("scan__study__study_date"), "scan__study_id", Study, "id"),
        *UPLOAD_ORDER.keys,
    ),
)


def dashboard_order(filters: DashboardFilters) -> DashboardOrder:
    """The order of dashboard_rows(filters): by study where a study date range is set."""
    if filters.date_from or filters.date_to:
        return STUDY_ORDER
    return UPLOAD_ORDER


# A search matching at most this many patients (and as many accession numbers) reads
# their studies from indexes; more, and the list walks its order checking each row.
SEARCH_FEW = 2_000


def _search_sets(term: str) -> tuple[QuerySet[Patient], QuerySet[Study]]:
    """The patients (by hospital id or name) and the studies (by accession number) a
    search term matches, each read from its own table's indexes (on PostgreSQL the
    trigram indexes of clinical 0007)."""
    by_patient = Q(identifier__icontains=term) | Q(name__icontains=term)
    patients = Patient.objects.filter(by_patient).order_by().values("pk")
    studies = (
        Study.objects.filter(accession_number__icontains=term).order_by().values("pk")
    )
    return patients, studies


def _search_broad_sql(term: str) -> tuple[str, list[Any]]:
    """Whether a term matches more than SEARCH_FEW patients or accession numbers, as
    one SQL expression reading at most SEARCH_FEW + 1 rows of each index or table."""
    parts, params = [], []
    for rows in _search_sets(term):
        sql, part_params = rows[: SEARCH_FEW + 1].query.sql_with_params()
        parts.append(f"(SELECT COUNT(*) FROM ({sql}) part) > %s")
        params.extend([*part_params, SEARCH_FEW])
    return f"({' OR '.join(parts)})", params


def search_is_broad(term: str) -> bool:
    """Whether a search term matches many patients or accession numbers (one bounded
    query; filter_facts reads it with the model versions instead)."""
    sql, params = _search_broad_sql(term)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {sql}", params)
        return bool(cursor.fetchone()[0])


def _search_matches(
    term: str, *, broad: bool, study: str = "", study_id: str = "pk"
) -> Q:
    """The search as a condition on rows that reach a study by the path `study`
    ("" for studies, "scan__study__" for analyses; `study_id` its id's path), chosen by
    how much it matches (`broad`: search_is_broad). The dashboard's rows and the API's
    study list both search through here.

    Few matches (a patient's name or hospital id): the studies of the matching
    patients, or with a matching accession number, read from their indexes. Many (a
    term most names hold): building that set read every study of every matching
    patient (1.3 s for the counts and 6 s for the page at a million analyses, most
    patients matching); checked on the joined patient and study of each row as the
    walk meets it, the walk stops after a page and the bounded count after its cap
    (the API's study list, q=Bench at a million analyses: 0.8 s to 30 ms).
    """
    if broad:
        return (
            Q(**{f"{study}patient__identifier__icontains": term})
            | Q(**{f"{study}patient__name__icontains": term})
            | Q(**{f"{study}accession_number__icontains": term})
        )
    patients, studies = _search_sets(term)
    matching = (
        Study.objects.filter(patient__in=patients)
        .order_by()
        .values("pk")
        .union(studies)
    )
    return Q(**{f"{study_id}__in": matching})


def _search_broad(filters: DashboardFilters) -> bool:
    """The search's reading: as read with the filters, else asked now (one query)."""
    if filters.search_broad is not None:
        return filters.search_broad
    return search_is_broad(filters.search)


def dashboard_rows(filters: DashboardFilters) -> QuerySet[Analysis]:
    """One row per analysis (a scan and a model version), in dashboard_order(filters):
    newest upload first, or where a study date range is set newest study first."""
    rows = _dashboard_row()
    if filters.date_from or filters.date_to:
        # On the joined study, which the order reads: the walk down the study_date
        # index starts at the range's end and stops after a page. Given as "the
        # study is one of those in the range", it walked from the newest study
        # checking each (83,000 index entries to reach a month in mid-year).
        rows = rows.filter(
            _study_dates(filters, prefix="scan__study__"),
        )
        filters = replace(filters, date_from=None, date_to=None)
    if filters.search:
        rows = rows.filter(
            _search_matches(
                filters.search,
                broad=_search_broad(filters),
                study="scan__study__",
                study_id="scan__study_id",
            )
        )
        filters = replace(filters, search="", search_broad=None)
    by_study = _study_conditions(filters)
    if by_study:
        # The matching studies first, then their scans (the scan_study index); as
        # joined conditions they were checked on every analysis row.
        studies = Study.objects.filter(by_study).order_by().values("pk")
        rows = rows.filter(scan__study_id__in=studies)
    if filters.label:
        rows = rows.filter(label=filters.label)
    if filters.confidence_min is not None:
        rows = rows.filter(confidence__gte=filters.confidence_min)
    if filters.confidence_max is not None:
        rows = rows.filter(confidence__lt=filters.confidence_max)
    if filters.review == "reviewed":
        rows = rows.filter(reviewed=True)
    elif filters.review == "unreviewed":
        rows = rows.filter(reviewed=False)
    if filters.status:
        rows = rows.filter(status=filters.status)
    if filters.model_version:
        rows = rows.filter(model_version=filters.model_version)
    if filters.distribution == "withheld":
        rows = rows.filter(withheld=True)
    elif filters.distribution:
        rows = rows.filter(
            in_distribution=filters.distribution == "inside", withheld=False
        )
    return rows.order_by(*dashboard_order(filters).by())


@dataclass(frozen=True)
class DashboardPage:
    """A page of dashboard rows in `order` and the cursors of the pages beside it.

    `next_cursor` starts the older page after the last row, `previous_cursor` the
    newer page before the first row; None where there is no such page."""

    object_list: list[Analysis]
    next_cursor: str | None
    previous_cursor: str | None
    order: DashboardOrder = UPLOAD_ORDER

    def __iter__(self) -> Iterator[Analysis]:
        return iter(self.object_list)

    def __len__(self) -> int:
        return len(self.object_list)

    def has_next(self) -> bool:
        return self.next_cursor is not None

    def has_previous(self) -> bool:
        return self.previous_cursor is not None


# Where the counts say at most this many rows match, a page sorts them whole.
SORT_FEW = 10_000


def _picked(
    rows: QuerySet[Analysis],
    limit: int,
    *,
    order: DashboardOrder,
    descending: bool,
    few: bool = False,
) -> Q:
    """The first `limit` of the filtered rows in the walk's order, as a condition on
    ids: picked reading little more than indexes and the order's columns, so only
    the rows shown are read whole (picked and read in one step, the matching rows
    were sorted whole to keep 50: on SQLite 190 ms for "unreviewed malignant" at
    10,000 studies, against 25 ms).

    Walking the order is quick when matches are common: 50 of them turn up soon.
    When `few` rows match (a failed status, the withheld), PostgreSQL still walked
    it, hoping to meet them, through 10,000 scans (0.4 to 1 s at a million
    analyses); ordered by an expression with the same value that no index provides,
    the few are read from their filter's index and sorted (a top-N sort)."""
    by = order.by(descending=descending, few=few)
    ids = rows.order_by(*by).values("pk")[:limit]
    return Q(pk__in=ids)


def _whole(picked: Q, order: DashboardOrder) -> list[Analysis]:
    """The picked rows with their scan, study and patient, in order: one query."""
    return list(_dashboard_row().filter(picked).order_by(*order.by()))


def dashboard_page(
    rows: QuerySet[Analysis],
    *,
    size: int,
    after: str | None = None,
    before: str | None = None,
    matching: int | None = None,
    order: DashboardOrder = UPLOAD_ORDER,
) -> DashboardPage:
    """The page of `rows` (dashboard_rows, in its `order`: dashboard_order) that
    starts after the cursor `after` (older rows), or ends before the cursor `before`
    (newer rows); without either, the newest. Keyset pagination: a page 1,000 pages
    in costs one query, as the first does, where an offset read and dropped every row
    before it. InvalidCursor for a cursor this list did not make (another order's
    among them). `matching` is how many rows match where it is known
    (dashboard_matching): few are sorted rather than walked to (_picked)."""
    fields = order.fields()
    few = matching is not None and matching <= SORT_FEW
    if before:
        newer = rows.filter(
            keyset_beyond(order.paths, cursor_decode(before, fields), descending=False)
        )
        # Walked up from the cursor: the size rows nearest it, and one more if a
        # newer page is beyond them. Without that one these are the newest rows: the
        # newest page (the first page itself, when walking back from the second;
        # shorter only where rows went since). Asked in one query as "these ids or
        # the newest page's", the planner read every analysis.
        picked = _picked(newer, size + 1, order=order, descending=False, few=few)
        nearest = _whole(picked, order)
        if not nearest:  # a cursor at the very top: nothing is newer
            return dashboard_page(rows, size=size, matching=matching, order=order)
        shown = nearest[1:] if len(nearest) > size else nearest
        return DashboardPage(
            object_list=shown,
            next_cursor=order.cursor_at(shown[-1]),
            previous_cursor=order.cursor_at(shown[0]) if len(nearest) > size else None,
            order=order,
        )
    if after:
        rows = rows.filter(
            keyset_beyond(order.paths, cursor_decode(after, fields), descending=True)
        )
    picked = _picked(rows, size + 1, order=order, descending=True, few=few)
    found = _whole(picked, order)
    shown = found[:size]
    return DashboardPage(
        object_list=shown,
        next_cursor=order.cursor_at(shown[-1]) if len(found) > size else None,
        previous_cursor=order.cursor_at(shown[0]) if after and shown else None,
        order=order,
    )


def filtered_studies(filters: DashboardFilters) -> QuerySet[Study]:
    """Studies matching the dashboard's filters, newest first (the API's study list).

    A filter on results keeps a study when one of its analyses matches it.
    """
    studies = (
        Study.objects.select_related("patient")
        .annotate(scan_count=study_scan_count())
        .filter(_study_conditions(filters))
    )
    if filters.search:
        studies = studies.filter(
            _search_matches(filters.search, broad=_search_broad(filters))
        )
    by_result = replace(
        filters,
        patient="",
        date_from=None,
        date_to=None,
        search="",
        search_broad=None,
    )
    if by_result != DashboardFilters():
        studies = studies.filter(
            pk__in=dashboard_rows(by_result).order_by().values("scan__study_id")
        )
    return studies.order_by("-study_date", "-id")


# Counts stop here: beyond it the page says "more than 10,000" (see dashboard_counts).
COUNT_CAP = 10_000


def dashboard_counts(rows: QuerySet[Analysis]) -> dict[str, Any]:
    """Counts per predicted label and per status of the filtered rows, in one query
    that reads at most COUNT_CAP + 1 of them: exact when at most COUNT_CAP match
    (`over_cap` False), else only "more than COUNT_CAP" (`over_cap` True, the tiles'
    numbers then count the rows read, not the rows matching, and are not shown).

    Bounded, not exact: an exact count reads every matching row, most of a request's
    time at a million analyses whatever the page shows, and a count per tile, each
    bounded, still read up to eight times the cap (a second for a confidence range,
    whose index is read whole into a bitmap before any limit applies). Bounded, a
    count costs what reading 10,001 rows costs at any size, and is exact where a
    number is acted on (a patient's results, the failed, a narrow filter). Counts
    kept up to date (as the agreement monitor's are) answer only the filters they
    are kept for, and the planner's estimates are not numbers to show a clinician.
    The queue's own numbers (queued, running, failed today) are queue_state's.
    """
    cap = COUNT_CAP
    sample = rows.order_by().values("status", "label", "withheld")[: cap + 1]
    sql, params = sample.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT status, label, withheld, COUNT(*) "
            f"FROM ({sql}) matching GROUP BY status, label, withheld",
            params,
        )
        groups = cursor.fetchall()
    labels = dict.fromkeys(LABELS, 0)
    statuses = dict.fromkeys(STATUSES, 0)
    withheld = 0
    for status, label, is_withheld, n in groups:
        if status in statuses:
            statuses[status] += n
        # Withheld results (not a breast ultrasound) count apart from every label.
        if is_withheld:
            withheld += n
        elif label in labels:
            labels[label] += n
    read = sum(statuses.values())
    return {
        "labels": labels,
        "statuses": statuses,
        "withheld": withheld,
        "cap": cap,
        "over_cap": read > cap,
    }


def dashboard_matching(counts: dict[str, Any]) -> int | None:
    """How many rows match, from dashboard_counts: None beyond its cap."""
    return None if counts["over_cap"] else sum(counts["statuses"].values())


def queue_state(*, now: datetime.datetime | None = None) -> dict[str, int]:
    """Analyses waiting and running now, and failed in the last day, in one query.

    Only rows counted here are read (analysis_status_finished): finished rows are
    nearly all of them, and the failures of earlier days (a few thousand at a
    million analyses, 10-20 ms per dashboard page when they were read) count for
    nothing here.
    """
    since = (now or timezone.now()) - datetime.timedelta(days=1)
    return Analysis.objects.filter(
        Q(status__in=(Status.QUEUED, Status.RUNNING))
        | Q(status=Status.FAILED, finished_at__gte=since)
    ).aggregate(
        queued=Count("id", filter=Q(status=Status.QUEUED)),
        running=Count("id", filter=Q(status=Status.RUNNING)),
        failed_last_day=Count(
            "id", filter=Q(status=Status.FAILED, finished_at__gte=since)
        ),
    )


def _model_versions_sql() -> str:
    """The distinct model versions, one index seek each rather than a scan of every
    analysis (a loose index scan, written as a recursive query SQLite and PostgreSQL
    both run)."""
    table = connection.ops.quote_name(Analysis._meta.db_table)
    column = connection.ops.quote_name("model_version")
    return (
        f"WITH RECURSIVE versions(v) AS ("
        f" SELECT MIN({column}) FROM {table}"
        f" UNION ALL SELECT (SELECT MIN({column}) FROM {table} WHERE {column} > v)"
        f" FROM versions WHERE v IS NOT NULL"
        f") SELECT v FROM versions WHERE v IS NOT NULL"
    )


def model_versions() -> list[str]:
    """The distinct model versions, in order (see _model_versions_sql)."""
    with connection.cursor() as cursor:
        cursor.execute(_model_versions_sql())
        return [row[0] for row in cursor.fetchall()]


@dataclass(frozen=True)
class FilterFacts:
    """What a list's filters are read against: the model versions to choose from, and
    whether the search term `search` matches many patients (search_is_broad)."""

    model_versions: list[str]
    search: str = ""
    search_broad: bool | None = None

    def read(self, filters: DashboardFilters) -> DashboardFilters:
        """The filters with their search's reading, where it was read for their term."""
        if filters.search and filters.search == self.search:
            return replace(filters, search_broad=self.search_broad)
        return filters


def filter_facts(*, search: str = "") -> FilterFacts:
    """The model versions, and whether `search` (the query's term, stripped as the
    filters strip it) is broad, in one statement. Both the dashboard and the API's
    study list read these before their rows, on every request: asked apart, the
    search's reading was one more round trip per searched page."""
    term = search.strip()
    if not term or "\x00" in term:  # no term, or one the filters refuse
        return FilterFacts(model_versions=model_versions())
    broad, params = _search_broad_sql(term)
    # The decision as a row of its own (there may be no versions), then the versions.
    sql = (
        f"SELECT 0, NULL, {broad}"
        f" UNION ALL SELECT 1, v, NULL FROM ({_model_versions_sql()}) versions_read"
        " ORDER BY 1, 2"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return FilterFacts(
        model_versions=[version for kind, version, _ in rows if kind == 1],
        search=term,
        search_broad=next(bool(is_broad) for kind, _, is_broad in rows if kind == 0),
    )


# --- worklist -----------------------------------------------------------------------


def _finished_analyses() -> QuerySet[Analysis]:
    return Analysis.objects.filter(status=Status.SUCCEEDED)


def _unreviewed_scans() -> QuerySet[Scan]:
    """Scans with a finished result that no signed review covers yet."""
    return Scan.objects.filter(
        Exists(_finished_analyses().filter(scan_id=OuterRef("pk")))
    ).exclude(Exists(signed_reviews().filter(scan_id=OuterRef("pk"))))


def _malignant() -> Cast:
    return Cast(KeyTextTransform("malignant", "probabilities"), FloatField())


def _scan_malignant(scan_ref: str = "pk") -> Subquery:
    """The malignant probability of a scan's latest finished result (the rule of
    study_review_columns and of portal.analyses.selectors.study_malignancies): none
    where that result is withheld, whatever a result it superseded said."""
    return Subquery(
        _finished_analyses()
        .filter(scan_id=OuterRef(scan_ref))
        .order_by("-queued_at", "-pk")
        .annotate(malignant=Case(When(withheld=False, then=_malignant()), default=None))
        .values("malignant")[:1],
        output_field=FloatField(),
    )


def study_review_columns() -> dict[str, Any]:
    """The rule behind Study.awaiting_review and Study.max_malignant, as expressions
    over an outer Study row (services write them; the worklist reads them).

    max_malignant is the highest malignant probability of the study's *unsigned*
    analysed images: what is left to read drives the worklist's order, not an image a
    radiologist has already signed.
    """
    # The study's scans first, then each one's finished result (analysis_scan_status_label):
    # joined to scans, SQLite read every finished analysis of every study instead
    # (30-90 ms per result recorded or review signed at 10,000 studies).
    unsigned_scans = (
        Scan.objects.filter(study_id=OuterRef(OuterRef("pk")))
        .exclude(Exists(signed_reviews().filter(scan_id=OuterRef("pk"))))
        .values("pk")
    )
    # Each scan's latest finished result only (the study-level result's rule,
    # portal.analyses.selectors.study_malignancies): a scan analysed again by another
    # model no longer ranks by its superseded result.
    superseded = _finished_analyses().filter(
        Q(queued_at__gt=OuterRef("queued_at"))
        | Q(queued_at=OuterRef("queued_at"), pk__gt=OuterRef("pk")),
        scan_id=OuterRef("scan_id"),
    )
    # A withheld result (not a breast ultrasound) has no probability to rank by, and
    # its scan none from a result it superseded either.
    latest = (
        _finished_analyses()
        .filter(scan_id__in=unsigned_scans)
        .exclude(Exists(superseded))
        .filter(withheld=False)
    )
    highest = (
        latest.order_by()
        .values("status")  # one group: every row here has the same status
        .annotate(highest=Max(_malignant()))
        .values("highest")
    )
    return {
        "awaiting_review": Exists(_unreviewed_scans().filter(study_id=OuterRef("pk"))),
        "max_malignant": Subquery(highest, output_field=FloatField()),
        # Flagged at the site's operating point: an unsigned image's latest result.
        "suspicious": Exists(latest.filter(suspicious=True)),
    }


# The study_worklist_suspicious index leads with the flag, then the same columns.
_WORKLIST_ORDER = ("-suspicious", "-max_malignant", "-study_date", "-id")


def worklist() -> QuerySet[Study]:
    """Studies waiting for a radiologist: those flagged suspicious at the site's
    operating point first, then the most suspicious unsigned image first.

    Reads the study's own columns (kept by study_review_refresh) through the
    study_worklist index, so a page costs the same at 10 or 10,000 studies. The rows
    of a page are read whole by worklist_page.
    """
    return Study.objects.filter(awaiting_review=True).order_by(*_WORKLIST_ORDER)


def _worklist_rows() -> QuerySet[Study]:
    """Worklist rows with what each shows: its most suspicious unsigned image
    (next_scan_id, next_scan_name), its unsigned and all images, and whether an
    unsigned image was flagged outside the training distribution."""
    unsigned = _unreviewed_scans().filter(study_id=OuterRef("pk"))
    most_suspicious = unsigned.annotate(malignant=_scan_malignant()).order_by(
        F("malignant").desc(nulls_last=True), "pk"
    )
    return (
        Study.objects.select_related("patient")
        .annotate(
            scan_count=study_scan_count(),
            unsigned_count=Subquery(
                unsigned.order_by()
                .values("study_id")
                .annotate(n=Count("pk"))
                .values("n"),
                output_field=IntegerField(),
            ),
            next_scan_id=Subquery(most_suspicious.values("pk")[:1]),
            next_scan_name=Subquery(most_suspicious.values("original_filename")[:1]),
            unsigned_outside=Exists(
                _finished_analyses()
                .filter(
                    scan__study_id=OuterRef("pk"), in_distribution=False, withheld=False
                )
                .exclude(_scan_is_reviewed())
            ),
        )
        .order_by(*_WORKLIST_ORDER)
    )


# The worklist's order as keyset paths (portal.keyset); max_malignant may be NULL (a
# study whose only unsigned results were withheld), ordered where the database puts
# NULLs, as the study_worklist_suspicious index has them.
_WORKLIST_PATHS = ("suspicious", "max_malignant", "study_date", "id")
_WORKLIST_NULLABLE = ("max_malignant",)


def _worklist_key(study: Study) -> tuple[Any, ...]:
    return tuple(getattr(study, path) for path in _WORKLIST_PATHS)


def _worklist_beyond(key: tuple[Any, ...], *, later: bool) -> Q:
    """Waiting studies after (`later`) or before a place in the worklist's order."""
    return keyset_beyond(
        _WORKLIST_PATHS,
        key,
        descending=later,
        nullable=_WORKLIST_NULLABLE,
        nulls_largest=connection.features.nulls_order_largest,
    )


def _worklist_ids(*, beyond: tuple[Any, ...] | None, later: bool, n: int) -> list[int]:
    """The ids of the `n` waiting studies nearest a place in the worklist's order
    (after it, or before it nearest first; from the top without one), read from the
    study_worklist_suspicious index alone."""
    studies = worklist()
    if not later:
        studies = studies.reverse()
    if beyond is not None:
        studies = studies.filter(_worklist_beyond(beyond, later=later))
    return list(studies.values_list("pk", flat=True)[:n])


def _worklist_cursor(study: Study) -> str:
    return cursor_encode(_worklist_key(study))


def _worklist_cursor_key(cursor: str) -> tuple[Any, ...]:
    fields = [Study._meta.get_field(path) for path in _WORKLIST_PATHS]
    nullable = [_WORKLIST_PATHS.index(path) for path in _WORKLIST_NULLABLE]
    return tuple(cursor_decode(cursor, fields, nullable=nullable))


@dataclass(frozen=True)
class WorklistPage:
    """A page of the worklist (its rows read whole by _worklist_rows), the cursors of
    the pages beside it (None where there is none), and how many studies wait.

    Keyset pagination, as the dashboard's: page 20 (or 1,000) costs what the first
    does, where an offset read every waiting study before it from the index (0.2 to
    0.6 s for page 20 at a million analyses on a loaded machine)."""

    object_list: list[Study]
    next_cursor: str | None
    previous_cursor: str | None
    count: int

    def __iter__(self) -> Iterator[Study]:
        return iter(self.object_list)

    def __len__(self) -> int:
        return len(self.object_list)

    def has_next(self) -> bool:
        return self.next_cursor is not None

    def has_previous(self) -> bool:
        return self.previous_cursor is not None


def _worklist_rows_of(ids: list[int]) -> list[Study]:
    return list(_worklist_rows().filter(pk__in=ids)) if ids else []


def worklist_page(
    *, size: int, after: str | None = None, before: str | None = None
) -> WorklistPage:
    """The page of the worklist after the cursor `after`, or before `before`;
    without either, the top. InvalidCursor for a cursor the worklist did not make.
    Walked back to the top, the page before is the top page itself (shorter than
    `size` only where studies left the worklist since)."""
    count = worklist_count()
    if before:
        nearest = _worklist_ids(
            beyond=_worklist_cursor_key(before), later=False, n=size + 1
        )
        if not nearest:  # a cursor at the very top: nothing comes before it
            return worklist_page(size=size)
        more = len(nearest) > size
        rows = _worklist_rows_of(nearest[:size])
        return WorklistPage(
            object_list=rows,
            next_cursor=_worklist_cursor(rows[-1]),
            previous_cursor=_worklist_cursor(rows[0]) if more else None,
            count=count,
        )
    key = _worklist_cursor_key(after) if after else None
    found = _worklist_rows_of(_worklist_ids(beyond=key, later=True, n=size + 1))
    shown = found[:size]
    return WorklistPage(
        object_list=shown,
        next_cursor=_worklist_cursor(shown[-1]) if len(found) > size else None,
        previous_cursor=_worklist_cursor(shown[0]) if after and shown else None,
        count=count,
    )


def worklist_top() -> Study | None:
    """The study at the top of the worklist, with its row's facts (where reading
    starts, whichever page is shown)."""
    return next(
        iter(_worklist_rows_of(_worklist_ids(beyond=None, later=True, n=1))), None
    )


def _waiting_in_study(study_id: int) -> list[int]:
    """A study's unsigned analysed scans, most suspicious first."""
    return list(
        _unreviewed_scans()
        .filter(study_id=study_id)
        .annotate(malignant=_scan_malignant())
        .order_by(F("malignant").desc(nulls_last=True), "pk")
        .values_list("pk", flat=True)
    )


@dataclass(frozen=True)
class ReadingPlace:
    """Where a scan stands in the reading order (see reading_place)."""

    study_position: int | None  # 1-based in the worklist; None: not on it
    studies: int
    image_position: int | None  # 1-based among its study's unsigned scans
    images: int
    previous: int | None
    next: int | None
    after_signing: int | None


@dataclass(frozen=True)
class _Neighbours:
    """A study's place in the reading order of studies: its 0-based index (None when
    it is not on the worklist), the length of that order, the study before it and
    the one after it (as a list of at most one), and the first two of the order."""

    index: int | None
    studies: int
    previous: int | None
    following: list[int]
    top: list[int]


def _worklist_neighbours(study_id: int, *, only_study: bool) -> _Neighbours:
    """The study's neighbours in the worklist (or, `only_study`, an order of the
    study alone), each one row of the study_worklist_suspicious index: the whole
    worklist's ids (61,000 at a million analyses) were read to find them."""
    if only_study:
        return _Neighbours(
            index=0, studies=1, previous=None, following=[], top=[study_id]
        )
    top = _worklist_ids(beyond=None, later=True, n=2)
    studies = worklist_count()
    study = (
        Study.objects.filter(pk=study_id, awaiting_review=True)
        .only(*_WORKLIST_PATHS)
        .first()
    )
    if study is None:
        return _Neighbours(
            index=None, studies=studies, previous=None, following=[], top=top
        )
    key = _worklist_key(study)
    earlier = worklist().filter(_worklist_beyond(key, later=False))
    before = _worklist_ids(beyond=key, later=False, n=1)
    return _Neighbours(
        index=earlier.count(),
        studies=studies,
        previous=before[0] if before else None,
        following=_worklist_ids(beyond=key, later=True, n=1),
        top=top,
    )


def reading_place(
    *, scan_id: int, study_id: int, only_study: bool = False
) -> ReadingPlace:
    """The unsigned scans before and after a scan in the reading order: the worklist's
    order of studies (or the scan's study alone), and in a study its most suspicious
    image first.

    `next` is the following scan; from the last one, the first still waiting (skipped
    scans come round again). `after_signing` is where "Sign and next" goes: the study's
    other unsigned scans first, then the top of the worklist. Signing changes the
    order (a study's most suspicious unsigned image drives it), so both are decided
    before the signing. Reads from the worklist's index only the study's neighbours
    and the top two, its place and its length (counted from the index), and the
    unsigned scans of at most three studies, whatever the size of the worklist.
    """
    own = _waiting_in_study(study_id)
    own_others = [pk for pk in own if pk != scan_id]
    neighbours = _worklist_neighbours(study_id, only_study=only_study)
    index = neighbours.index

    def first_elsewhere(candidates: list[int]) -> int | None:
        for other in candidates:
            waiting = _waiting_in_study(other) if other != study_id else []
            if waiting:
                return waiting[0]
        return None

    top = first_elsewhere(neighbours.top)
    after_signing = own_others[0] if own_others else top
    if scan_id not in own:
        return ReadingPlace(
            study_position=None if index is None else index + 1,
            studies=neighbours.studies,
            image_position=None,
            images=len(own),
            previous=None,
            next=after_signing,
            after_signing=after_signing,
        )
    position = own.index(scan_id)
    previous = own[position - 1] if position else None
    if previous is None and neighbours.previous is not None:
        earlier = _waiting_in_study(neighbours.previous)
        previous = earlier[-1] if earlier else None
    following = own[position + 1] if position + 1 < len(own) else None
    if following is None and index is not None:
        following = first_elsewhere(neighbours.following) or top
    if following is None and own[0] != scan_id:
        following = own[0]
    return ReadingPlace(
        study_position=None if index is None else index + 1,
        studies=neighbours.studies,
        image_position=position + 1,
        images=len(own),
        previous=previous,
        next=following,
        after_signing=after_signing,
    )


def worklist_count() -> int:
    return Study.objects.filter(awaiting_review=True).count()


def study_review_state(*, study: Study) -> str:
    """ "reviewed" when every analysed scan has a signed review, else "unreviewed";
    "awaiting results" while no scan has a finished analysis yet."""
    scans = Scan.objects.filter(study_id=study.pk)
    # Driven from the study's scans: a plain join lets SQLite's planner start from
    # every finished analysis of every study (seconds at 10,000 studies).
    if not scans.filter(
        Exists(_finished_analyses().filter(scan_id=OuterRef("pk")))
    ).exists():
        return "awaiting results"
    if _unreviewed_scans().filter(study_id=study.pk).exists():
        return "unreviewed"
    return "reviewed"


def scan_review_states(*, study: Study) -> dict[int, Review | None]:
    """The current signed review (or None) of each scan of a study."""
    reviews = (
        current_signed_reviews().filter(scan__study=study).select_related("author")
    )
    states: dict[int, Review | None] = dict.fromkeys(
        study.scans.values_list("pk", flat=True)
    )
    for review in reviews.order_by("scan_id", "version"):
        states[review.scan_id] = review
    return states


# --- review page --------------------------------------------------------------------


def current_signed_review(*, scan: Scan) -> Review | None:
    """The scan's reading of record: its latest signed review, or None."""
    return (
        scan.reviews.filter(signed_at__isnull=False)
        .select_related("author", "analysis")
        .order_by("-version")
        .first()
    )


def signed_outline_mask(review: Review) -> Any:
    """The signed reading's lesion mask (bool, the scan's size) where the reader
    corrected the outline or said "no lesion"; None where the model's outline stands."""
    import numpy as np
    from django.core.files.storage import default_storage

    from ml.render import read_mask

    if review.outline_state == OutlineState.NO_LESION:
        return np.zeros((review.scan.height, review.scan.width), bool)
    if review.outline_state != OutlineState.CORRECTED or not review.outline:
        return None
    with default_storage.open(review.outline.name, "rb") as stored:
        return read_mask(stored.read())


def signed_outline_layer(review: Review | None) -> dict[str, str] | None:
    """The viewer layer of a signed reading's corrected outline (beside the model's)."""
    from django.urls import reverse

    if review is None or not review.is_signed or not review.outline:
        return None
    return {
        "kind": "signed_outline",
        "title": f"Radiologist's outline (signed, v{review.version})",
        "source": "picture",
        "url": reverse("review:review_outline_layer", args=[review.pk]),
        "download_url": reverse("review:review_outline", args=[review.pk]),
    }


def scan_analyses(*, scan: Scan) -> list[Analysis]:
    return list(scan.analyses.order_by("-queued_at", "-id"))


def scan_reviews(*, scan: Scan) -> list[Review]:
    return list(
        scan.reviews.select_related("author", "analysis", "amends").order_by("-version")
    )


# --- agreement monitor --------------------------------------------------------------


@dataclass
class Agreement:
    total: int = 0
    agreed: int = 0
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)
    per_label: list[dict[str, Any]] = field(default_factory=list)
    per_version: list[dict[str, Any]] = field(default_factory=list)
    per_month: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rate(self) -> float | None:
        return self.agreed / self.total if self.total else None


def _rate(agreed: int, total: int) -> float | None:
    return agreed / total if total else None


def agreement_cells() -> QuerySet[Review]:
    """The rule behind AgreementCount, computed from the reviews themselves: current
    signed readings of finished analyses, counted per model version, month of signing
    (first day, portal time zone), model label and radiologist's label."""
    return (
        current_signed_reviews()
        .filter(analysis__status=Status.SUCCEEDED)
        .annotate(month=TruncMonth("signed_at", output_field=DateField()))
        .values(
            "month",
            model_version=F("analysis__model_version"),
            model_label=F("analysis__label"),
            reader_label=F("label"),
        )
        .annotate(readings=Count("id"))
        .order_by()
    )


def _agreement_by(
    cells: QuerySet[AgreementCount], key: str, *, name: str
) -> Iterator[dict[str, Any]]:
    """Total, agreed and rate of the readings grouped by `key` (shown as `name`).

    A group whose readings were all amended away keeps cells at 0; it is left out, as
    it was when these were counted from the reviews."""
    agrees = Q(model_label=F("reader_label"))
    rows = (
        cells.values(key)
        .annotate(
            total=Coalesce(Sum("readings"), 0),
            agreed=Coalesce(Sum("readings", filter=agrees), 0),
        )
        .filter(total__gt=0)
        .order_by(key)
    )
    for row in rows:
        yield {
            name: row[key],
            "total": row["total"],
            "agreed": row["agreed"],
            "rate": _rate(row["agreed"], row["total"]),
        }


def agreement(*, model_version: str = "") -> Agreement:
    """How often the model's label matched the radiologist's current signed reading.

    Read from AgreementCount (a few rows per model version and month), which the
    review services keep as readings are signed and amended.
    """
    cells = AgreementCount.objects.all()
    if model_version:
        cells = cells.filter(model_version=model_version)
    result = Agreement()
    result.confusion = {m: dict.fromkeys(LABELS, 0) for m in LABELS}
    pairs = (
        cells.values("model_label", "reader_label")
        .annotate(n=Sum("readings"))
        .order_by()
    )
    for row in pairs:
        model_label, reader_label = row["model_label"], row["reader_label"]
        if model_label in result.confusion and reader_label in LABELS:
            result.confusion[model_label][reader_label] += row["n"]
        result.total += row["n"]
        if model_label == reader_label:
            result.agreed += row["n"]
    # Per label of the radiologist: of the scans read as X, how many the model called X.
    for label in LABELS:
        total = sum(result.confusion[m][label] for m in LABELS)
        agreed = result.confusion[label][label]
        result.per_label.append(
            {
                "label": label,
                "total": total,
                "agreed": agreed,
                "rate": _rate(agreed, total),
            }
        )
    result.per_version = list(
        _agreement_by(cells, "model_version", name="model_version")
    )
    result.per_month = list(_agreement_by(cells, "month", name="month"))
    return result

"""`/metrics`: what a Prometheus server scrapes, written by prometheus_client.

Everything is read when scraped, from the database (the source of truth) and the broker,
so any number of web processes report the same figures: a collector builds the metric
families on each scrape instead of counters kept in one process's memory. Readable with
the bearer token METRICS_TOKEN (for the scraper) or by a signed-in staff user; nobody else.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Iterator
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db.models import Count, DurationField, ExpressionWrapper, F, Min, Q, Sum
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client.core import (
    CollectorRegistry,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from portal.analyses import broker
from portal.analyses.models import Analysis

logger = logging.getLogger(__name__)

DURATION_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)
PREFIX = "busai"


def _authorised(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    if token and header.startswith("Bearer "):
        return hmac.compare_digest(header[7:].strip().encode(), token.encode())
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_authenticated and user.is_staff)


def _analyses() -> Iterator[Metric]:
    counts = dict(
        Analysis.objects.values_list("status").annotate(n=Count("id")).order_by()
    )
    by_status = GaugeMetricFamily(
        f"{PREFIX}_analyses", "Analyses by status.", labels=["status"]
    )
    for status in Analysis.Status.values:
        by_status.add_metric([status], counts.get(status, 0))
    yield by_status

    now = timezone.now()
    oldest = Analysis.objects.filter(status=Analysis.Status.QUEUED).aggregate(
        oldest=Min("queued_at")
    )["oldest"]
    yield GaugeMetricFamily(
        f"{PREFIX}_analysis_oldest_queued_seconds",
        "Age of the oldest queued analysis (0 when none).",
        value=round((now - oldest).total_seconds(), 3) if oldest else 0,
    )

    duration = ExpressionWrapper(
        F("finished_at") - F("started_at"), output_field=DurationField()
    )
    finished = Analysis.objects.filter(
        status=Analysis.Status.SUCCEEDED,
        started_at__isnull=False,
        finished_at__isnull=False,
    ).annotate(duration=duration)
    buckets = {
        f"le_{i}": Count("id", filter=Q(duration__lte=timedelta(seconds=bound)))
        for i, bound in enumerate(DURATION_BUCKETS)
    }
    totals = finished.aggregate(count=Count("id"), total=Sum("duration"), **buckets)
    total = totals["total"]
    yield HistogramMetricFamily(
        f"{PREFIX}_analysis_duration_seconds",
        "Time from claim to stored result of succeeded analyses.",
        buckets=[
            (f"{bound:g}", totals[f"le_{i}"])
            for i, bound in enumerate(DURATION_BUCKETS)
        ]
        + [("+Inf", totals["count"])],
        sum_value=round(total.total_seconds(), 3) if total else 0,
    )

    hour_ago = now - timedelta(hours=1)
    recent = dict(
        Analysis.objects.filter(finished_at__gte=hour_ago)
        .values_list("status")
        .annotate(n=Count("id"))
        .order_by()
    )
    finished_recently = GaugeMetricFamily(
        f"{PREFIX}_analyses_finished_last_hour",
        "Analyses finished in the last hour.",
        labels=["status"],
    )
    for status in (Analysis.Status.SUCCEEDED, Analysis.Status.FAILED):
        finished_recently.add_metric([status], recent.get(status, 0))
    yield finished_recently


def _queues() -> Iterator[Metric]:
    try:
        depths = broker.queue_depths()
        up = 1
    except broker.BrokerUnavailable:
        logger.warning("metrics: broker unreachable", exc_info=True)
        depths, up = {}, 0
    yield GaugeMetricFamily(
        f"{PREFIX}_broker_up", "1 when the broker answered this scrape.", value=up
    )
    queue_depth = GaugeMetricFamily(
        f"{PREFIX}_queue_depth",
        'Messages waiting in a broker queue; queue="unacked": delivered, not yet done.',
        labels=["queue"],
    )
    for queue, depth in depths.items():
        queue_depth.add_metric([queue], depth)
    yield queue_depth


class PortalCollector(Collector):
    """The portal's figures, read from the database and the broker on each scrape."""

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        yield from _analyses()
        yield from _queues()
        yield GaugeMetricFamily(
            f"{PREFIX}_scrape_duration_seconds",
            "Time spent producing this page.",
            value=round(time.perf_counter() - started, 4),
        )


# A registry of our own: the default one would add this web process's own figures,
# which differ between processes and say nothing about the analyses.
REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(PortalCollector())


@login_not_required
@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    if not _authorised(request):
        return HttpResponse(
            "metrics need the bearer token or a staff login\n",
            status=403,
            content_type="text/plain",
        )
    # Prometheus' text format, or OpenMetrics for a scraper that asks for it.
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encode(REGISTRY), content_type=content_type)

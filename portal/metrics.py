"""`/metrics`: what a Prometheus server scrapes, in its text format (no client library).

Everything is read when scraped, from the database (the source of truth) and the broker,
so any number of web processes report the same figures. Readable with the bearer token
METRICS_TOKEN (for the scraper) or by a signed-in staff user; nobody else.
"""

from __future__ import annotations

import hmac
import logging
import time
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db.models import Count, DurationField, ExpressionWrapper, F, Min, Q, Sum
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from portal.analyses import broker
from portal.analyses.models import Analysis

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)
PREFIX = "busai"


def _authorised(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    if token and header.startswith("Bearer "):
        return hmac.compare_digest(header[7:].strip().encode(), token.encode())
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_authenticated and user.is_staff)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {PREFIX}_{name} {help_text}")
        self.lines.append(f"# TYPE {PREFIX}_{name} {kind}")

    def sample(self, name: str, value: float, **labels: str) -> None:
        label_text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
        suffix = f"{{{label_text}}}" if label_text else ""
        self.lines.append(f"{PREFIX}_{name}{suffix} {value:g}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _analyses(out: _Exposition) -> None:
    counts = dict(
        Analysis.objects.values_list("status").annotate(n=Count("id")).order_by()
    )
    out.metric("analyses", "gauge", "Analyses by status.")
    for status in Analysis.Status.values:
        out.sample("analyses", counts.get(status, 0), status=status)

    now = timezone.now()
    oldest = Analysis.objects.filter(status=Analysis.Status.QUEUED).aggregate(
        oldest=Min("queued_at")
    )["oldest"]
    out.metric(
        "analysis_oldest_queued_seconds",
        "gauge",
        "Age of the oldest queued analysis (0 when none).",
    )
    out.sample(
        "analysis_oldest_queued_seconds",
        round((now - oldest).total_seconds(), 3) if oldest else 0,
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
    out.metric(
        "analysis_duration_seconds",
        "histogram",
        "Time from claim to stored result of succeeded analyses.",
    )
    for i, bound in enumerate(DURATION_BUCKETS):
        out.sample(
            "analysis_duration_seconds_bucket", totals[f"le_{i}"], le=f"{bound:g}"
        )
    out.sample("analysis_duration_seconds_bucket", totals["count"], le="+Inf")
    total = totals["total"]
    out.sample(
        "analysis_duration_seconds_sum",
        round(total.total_seconds(), 3) if total else 0,
    )
    out.sample("analysis_duration_seconds_count", totals["count"])

    hour_ago = now - timedelta(hours=1)
    recent = dict(
        Analysis.objects.filter(finished_at__gte=hour_ago)
        .values_list("status")
        .annotate(n=Count("id"))
        .order_by()
    )
    out.metric(
        "analyses_finished_last_hour", "gauge", "Analyses finished in the last hour."
    )
    for status in (Analysis.Status.SUCCEEDED, Analysis.Status.FAILED):
        out.sample("analyses_finished_last_hour", recent.get(status, 0), status=status)


def _queues(out: _Exposition) -> None:
    try:
        depths = broker.queue_depths()
        up = 1
    except broker.BrokerUnavailable:
        logger.warning("metrics: broker unreachable", exc_info=True)
        depths, up = {}, 0
    out.metric("broker_up", "gauge", "1 when the broker answered this scrape.")
    out.sample("broker_up", up)
    out.metric(
        "queue_depth",
        "gauge",
        'Messages waiting in a broker queue; queue="unacked": delivered, not yet done.',
    )
    for queue, depth in depths.items():
        out.sample("queue_depth", depth, queue=queue)


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
    started = time.perf_counter()
    out = _Exposition()
    _analyses(out)
    _queues(out)
    out.metric("scrape_duration_seconds", "gauge", "Time spent producing this page.")
    out.sample("scrape_duration_seconds", round(time.perf_counter() - started, 4))
    return HttpResponse(out.text(), content_type=CONTENT_TYPE)

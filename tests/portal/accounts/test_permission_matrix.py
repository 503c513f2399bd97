"""Every URL of the portal, as anonymous and as each role: allowed or denied.

The URL list comes from the resolver, so a URL added without an entry in MATRIX (or,
for the admin site, without the admin's own checks) fails here until someone decides
who may use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.contrib import admin
from django.contrib.contenttypes.models import ContentType
from django.shortcuts import resolve_url
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from portal.accounts.roles import ADMINISTRATOR, RADIOLOGIST, STAFF

ANONYMOUS = "anonymous"
NO_ROLE = "no role"
EVERYONE = frozenset({ANONYMOUS, NO_ROLE, STAFF, RADIOLOGIST, ADMINISTRATOR})
SIGNED_IN = EVERYONE - {ANONYMOUS}
READERS = frozenset({STAFF, RADIOLOGIST, ADMINISTRATOR})


@dataclass(frozen=True)
class Rule:
    allowed: frozenset[str]
    method: str = "GET"
    kwargs: Any = None  # objects -> dict of URL kwargs
    data: dict = field(default_factory=dict)
    # False where a denial and success look alike (logout redirects to the login page).
    decidable: bool = True


def _pk(kind: str):
    return lambda objects: {"pk": getattr(objects, kind).pk}


def _batch(objects: Any) -> Any:
    from portal.ingest.models import UploadBatch

    batch, _ = UploadBatch.objects.get_or_create(
        study=objects.study, source="web", created_by=objects.study.created_by
    )
    return batch


def _signed_outline(objects: Any) -> Any:
    """The scan's reading, signed with a corrected outline (made once per test)."""
    import numpy as np
    from django.contrib.auth import get_user_model

    from portal.accounts.roles import assign_role
    from portal.review.models import Review
    from portal.review.services import review_save

    review = Review.objects.filter(analysis__scan=objects.scan).first()
    if review is None:
        reader, created = get_user_model().objects.get_or_create(username="outliner")
        if created:
            assign_role(reader, RADIOLOGIST)
        mask = np.zeros((objects.scan.height, objects.scan.width), bool)
        mask[: objects.scan.height // 2, : objects.scan.width // 2] = True
        review = review_save(
            analysis=objects.analysis,
            author=reader,
            agrees_with_model=True,
            label="",
            birads="3",
            sign=True,
            outline_state="corrected",
            outline_mask=mask,
        )
    return review


def _calibration(objects: Any) -> Any:
    from portal.registry.models import SiteCalibration

    calibration, _ = SiteCalibration.objects.get_or_create(
        model_version=objects.analysis.model_version,
        version=1,
        defaults={
            "parameters": {
                "temperature": 1.0,
                "offsets": [0.0, 0.0, 0.0],
                "threshold": 0.5,
                "target_sensitivity": 0.9,
                "n": 100,
            },
            "target_sensitivity": 0.9,
            "reads": 100,
            "created_by": objects.study.created_by,
        },
    )
    return calibration


def _fit(objects: Any) -> Any:
    """A failed fit (what "Run again" takes), made again if a check ran it."""
    from portal.review.models import CalibrationFit

    fit, _ = CalibrationFit.objects.update_or_create(
        model_version=objects.analysis.model_version,
        defaults={
            "target_sensitivity": 0.9,
            "requested_by": objects.study.created_by,
            "status": CalibrationFit.Status.FAILED,
        },
    )
    return fit


def _lesion(objects: Any) -> Any:
    from portal.clinical.models import Lesion

    lesion, _ = Lesion.objects.get_or_create(
        study=objects.study,
        label="A",
        defaults={"created_by": objects.study.created_by},
    )
    return lesion


def _model_version(objects: Any) -> Any:
    from portal.registry.models import ModelVersion

    record, _ = ModelVersion.objects.get_or_create(
        version="matrix-model-1", defaults={"source": ModelVersion.Source.INSTALLED}
    )
    return record


def _promotion_request(objects: Any) -> Any:
    """A pending promotion, asked by someone other than every client of the matrix."""
    from portal.registry.models import PromotionRequest

    request, _ = PromotionRequest.objects.get_or_create(
        model_version=_model_version(objects),
        defaults={
            "baseline": objects.analysis.model_version,
            "reason": "matrix",
            "requested_by": objects.study.created_by,
        },
    )
    return request


# url name -> the rules (one per method worth checking)
MATRIX: dict[str, list[Rule]] = {
    "home": [Rule(SIGNED_IN)],
    "healthz": [Rule(EVERYONE)],
    # Prometheus scrapes with METRICS_TOKEN; in a browser, staff (administrators) only.
    "metrics": [Rule(frozenset({ADMINISTRATOR}))],
    "login": [Rule(EVERYONE)],
    "logout": [Rule(EVERYONE, method="POST", decidable=False)],
    "clinical:patient_list": [
        Rule(READERS),
        Rule(frozenset({STAFF}), method="POST", data={"identifier": "", "name": ""}),
    ],
    "clinical:patient_detail": [
        Rule(READERS, kwargs=_pk("patient")),
        Rule(frozenset({STAFF}), method="POST", kwargs=_pk("patient")),
    ],
    "clinical:study_detail": [Rule(READERS, kwargs=_pk("study"))],
    "clinical:study_upload": [
        Rule(frozenset({STAFF}), method="POST", kwargs=_pk("study"))
    ],
    "clinical:study_status": [Rule(READERS, kwargs=_pk("study"))],
    "clinical:scan_original": [Rule(READERS, kwargs=_pk("scan"))],
    "analyses:retry": [Rule(frozenset({STAFF}), method="POST", kwargs=_pk("analysis"))],
    "analyses:artifact": [
        Rule(READERS, kwargs=lambda o, kind=kind: {"pk": o.analysis.pk, "kind": kind})
        for kind in ("mask", "overlay", "gradcam", "seg_gradcam")
    ],
    "review:dashboard": [Rule(READERS)],
    "review:worklist": [Rule(frozenset({RADIOLOGIST}))],
    "review:agreement": [Rule(frozenset({RADIOLOGIST, ADMINISTRATOR}))],
    "review:scan_review": [
        Rule(READERS, kwargs=_pk("scan")),
        Rule(frozenset({RADIOLOGIST}), method="POST", kwargs=_pk("scan")),
    ],
    # Grouping a study's images into lesions: whoever may sign readings.
    "review:scan_lesion": [
        Rule(
            frozenset({RADIOLOGIST}),
            method="POST",
            kwargs=_pk("scan"),
            data={"lesion": "new"},
        )
    ],
    "review:scan_display": [Rule(READERS, kwargs=_pk("scan"))],
    "review:analysis_outline": [Rule(READERS, kwargs=_pk("analysis"))],
    "review:study_report": [Rule(READERS, kwargs=_pk("study"))],
    # The reader's corrected outline: whoever may read reviews.
    "review:review_outline": [
        Rule(READERS, kwargs=lambda o: {"pk": _signed_outline(o).pk})
    ],
    "review:review_outline_layer": [
        Rule(READERS, kwargs=lambda o: {"pk": _signed_outline(o).pk})
    ],
    # Site calibration: administrators only; the biopsy outcome: radiologists.
    "review:calibration": [
        Rule(frozenset({ADMINISTRATOR})),
        Rule(
            frozenset({ADMINISTRATOR}),
            method="POST",
            data={"target_sensitivity": "0.9"},
        ),
    ],
    "review:calibration_activate": [
        Rule(
            frozenset({ADMINISTRATOR}),
            method="POST",
            kwargs=lambda o: {"pk": _calibration(o).pk},
        )
    ],
    "review:calibration_rollback": [Rule(frozenset({ADMINISTRATOR}), method="POST")],
    "review:calibration_fit_status": [
        Rule(frozenset({ADMINISTRATOR}), kwargs=lambda o: {"pk": _fit(o).pk})
    ],
    "review:calibration_fit_retry": [
        Rule(
            frozenset({ADMINISTRATOR}),
            method="POST",
            kwargs=lambda o: {"pk": _fit(o).pk},
        )
    ],
    # The model registry: administrators only.
    "review:models": [Rule(frozenset({ADMINISTRATOR}))],
    "review:model_promote": [
        Rule(
            frozenset({ADMINISTRATOR}),
            method="POST",
            kwargs=lambda o: {"pk": _model_version(o).pk},
        )
    ],
    "review:model_promotion_confirm": [
        Rule(
            frozenset({ADMINISTRATOR}),
            method="POST",
            kwargs=lambda o: {"pk": _promotion_request(o).pk},
        )
    ],
    "review:model_promotion_withdraw": [
        Rule(
            frozenset({ADMINISTRATOR}),
            method="POST",
            kwargs=lambda o: {"pk": _promotion_request(o).pk},
        )
    ],
    "review:model_rollback": [Rule(frozenset({ADMINISTRATOR}), method="POST")],
    "review:model_shadow": [Rule(frozenset({ADMINISTRATOR}), method="POST")],
    "review:model_upload": [Rule(frozenset({ADMINISTRATOR}), method="POST")],
    "review:study_pathology": [
        Rule(
            frozenset({RADIOLOGIST}),
            method="POST",
            kwargs=_pk("study"),
            data={"outcome": "benign"},
        )
    ],
    "review:lesion_pathology": [
        Rule(
            frozenset({RADIOLOGIST}),
            method="POST",
            kwargs=lambda o: {"pk": _lesion(o).pk},
            data={"outcome": "malignant"},
        )
    ],
    # Uploads (portal/ingest)
    "ingest:batch_detail": [Rule(READERS, kwargs=lambda o: {"pk": _batch(o).pk})],
    "ingest:batch_progress": [Rule(READERS, kwargs=lambda o: {"pk": _batch(o).pk})],
    # REST API (portal/api): anonymous calls get 401, calls without the role 403.
    "api:root": [Rule(SIGNED_IN)],
    "api:token": [Rule(EVERYONE, method="POST", decidable=False)],
    # DELETE revokes; GET answers 405 to anyone signed in.
    "api:token-revoke": [Rule(SIGNED_IN)],
    "api:schema": [Rule(SIGNED_IN)],
    "api:docs": [Rule(SIGNED_IN)],
    "api:patient-list": [
        Rule(READERS),
        Rule(frozenset({STAFF}), method="POST", data={"identifier": "", "name": ""}),
    ],
    "api:patient-detail": [Rule(READERS, kwargs=_pk("patient"))],
    "api:study-list": [
        Rule(READERS),
        Rule(frozenset({STAFF}), method="POST", data={"patient": ""}),
    ],
    "api:study-detail": [Rule(READERS, kwargs=_pk("study"))],
    "api:study-scans": [Rule(frozenset({STAFF}), method="POST", kwargs=_pk("study"))],
    "api:batch-detail": [Rule(READERS, kwargs=lambda o: {"pk": _batch(o).pk})],
    "api:analysis-detail": [Rule(READERS, kwargs=_pk("analysis"))],
    # Site calibrations (aggregates): administrators only, read-only.
    "api:calibration-list": [Rule(frozenset({ADMINISTRATOR}))],
    "api:calibration-active": [Rule(frozenset({ADMINISTRATOR}))],
    "api:calibration-detail": [
        Rule(frozenset({ADMINISTRATOR}), kwargs=lambda o: {"pk": _calibration(o).pk})
    ],
    "api:analysis-retry": [
        Rule(frozenset({STAFF}), method="POST", kwargs=_pk("analysis"))
    ],
    "api:analysis-artifact": [
        Rule(READERS, kwargs=lambda o, kind=kind: {"pk": o.analysis.pk, "kind": kind})
        for kind in ("mask", "overlay", "gradcam", "seg_gradcam")
    ],
    "api:scan-original": [Rule(READERS, kwargs=_pk("scan"))],
    "api:scan-signed-outline": [
        Rule(READERS, kwargs=lambda o: {"pk": _signed_outline(o).analysis.scan_id})
    ],
    "api:analysis-dicom": [
        Rule(READERS, kwargs=lambda o: {"pk": o.analysis.pk, "kind": "zip"})
    ],
    "dicomnet:analysis_dicom": [
        Rule(READERS, kwargs=lambda o: {"pk": o.analysis.pk, "kind": "zip"})
    ],
}


def _walk(patterns: list, namespace: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    found = []
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            inner = (*namespace, pattern.namespace) if pattern.namespace else namespace
            found += _walk(pattern.url_patterns, inner)
        elif isinstance(pattern, URLPattern):
            found.append((":".join((*namespace, pattern.name or "")), pattern))
    return found


def portal_urls() -> list[str]:
    return sorted(
        {name for name, _ in _walk(get_resolver().url_patterns)}
        - {
            name
            for name, _ in _walk(get_resolver().url_patterns)
            if name.startswith("admin:")
        }
    )


def admin_urls() -> list[tuple[str, Any]]:
    return [
        (n, p) for n, p in _walk(get_resolver().url_patterns) if n.startswith("admin:")
    ]


@dataclass
class Objects:
    patient: Any
    study: Any
    scan: Any
    analysis: Any


@pytest.fixture
def objects(study: Any, user: Any, make_analysed_scan: Any) -> Objects:
    scan = make_analysed_scan(study, user)
    return Objects(
        patient=study.patient, study=study, scan=scan, analysis=scan.analyses.get()
    )


@pytest.fixture
def clients(make_user: Any) -> dict[str, Client]:
    clients = {ANONYMOUS: Client(), NO_ROLE: Client()}
    clients[NO_ROLE].force_login(make_user(None, "no-role"))
    for role in (STAFF, RADIOLOGIST, ADMINISTRATOR):
        client = Client()
        client.force_login(make_user(role, f"matrix-{role}"))
        clients[role] = client
    return clients


def _denied(response: Any, *login_urls: str) -> bool:
    if response.status_code in (401, 403):  # 401: the API's "who are you?"
        return True
    if response.status_code in (301, 302):
        return urlsplit(response["Location"]).path in login_urls
    return False


def test_every_portal_url_has_a_rule():
    unnamed = [n for n in portal_urls() if n.endswith(":") or not n]
    assert not unnamed, f"URL patterns without a name: {unnamed}"
    missing = sorted(set(portal_urls()) - set(MATRIX))
    assert not missing, f"add these URLs to MATRIX (who may use them?): {missing}"
    stale = sorted(set(MATRIX) - set(portal_urls()))
    assert not stale, f"MATRIX names URLs that no longer exist: {stale}"


@pytest.mark.parametrize("name", sorted(MATRIX))
def test_the_matrix_holds_for(name, objects, clients):
    login_url = resolve_url(settings.LOGIN_URL)
    failures = []
    for rule in MATRIX[name]:
        url = reverse(name, kwargs=rule.kwargs(objects) if rule.kwargs else None)
        for who, client in clients.items():
            send = client.post if rule.method == "POST" else client.get
            response = send(url, rule.data)
            if response.status_code == 404 or response.status_code >= 500:
                failures.append(f"{rule.method} {url} as {who}: {response.status_code}")
                continue
            if not rule.decidable:
                continue
            denied = _denied(response, login_url)
            if denied == (who in rule.allowed):
                expected = "allowed" if who in rule.allowed else "denied"
                failures.append(
                    f"{rule.method} {url} as {who}: expected {expected}, "
                    f"got {response.status_code}"
                )
    assert not failures, "\n".join(failures)


def _admin_kwargs(name: str, pattern: Any, objects: Objects, admin_user: Any) -> dict:
    by_prefix = {
        f"{m._meta.app_label}_{m._meta.model_name}": m for m in admin.site._registry
    }
    kwargs: dict[str, Any] = {}
    model = next(
        (m for prefix, m in by_prefix.items() if name.startswith(f"admin:{prefix}_")),
        None,
    )
    for key in pattern.pattern.regex.groupindex:
        if key in ("object_id", "id"):
            if model is None:
                kwargs[key] = objects.patient.pk
                continue
            instance = model._default_manager.order_by("pk").first()
            if instance is None and model is type(admin_user):
                instance = admin_user
            kwargs[key] = instance.pk if instance is not None else 1
        elif key == "app_label":
            kwargs[key] = "clinical"
        elif key == "content_type_id":
            kwargs[key] = ContentType.objects.get_for_model(objects.patient).pk
        elif key == "url":
            kwargs[key] = "nowhere/"
        else:
            raise AssertionError(f"no value for {key} in {name}")
    return kwargs


def test_the_admin_site_is_for_administrators_only(objects, clients):
    logins = (reverse("admin:login"), resolve_url(settings.LOGIN_URL))
    administrator = clients[ADMINISTRATOR].session["_auth_user_id"]
    failures = []
    checked = 0
    for name, pattern in admin_urls():
        if name in ("admin:login", "admin:logout"):
            continue  # open to all: signing in and out
        if name == "admin:":  # the admin's unnamed catch-all
            url = reverse("admin:index") + "nowhere/"
        else:
            url = reverse(
                name, kwargs=_admin_kwargs(name, pattern, objects, administrator)
            )
        for who in (ANONYMOUS, NO_ROLE, STAFF, RADIOLOGIST):
            response = clients[who].get(url)
            checked += 1
            if not _denied(response, *logins):
                failures.append(f"GET {url} as {who}: {response.status_code}")
    assert checked > 100
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    ("url_name", "args", "status"),
    [
        ("admin:index", [], 200),
        ("admin:auth_user_changelist", [], 200),
        ("admin:auth_user_add", [], 200),
        ("admin:auth_group_changelist", [], 200),
        ("admin:audit_accessrecord_changelist", [], 200),
        ("admin:audit_accessrecord_add", [], 403),
        ("admin:auditlog_logentry_changelist", [], 200),
        ("admin:auditlog_logentry_add", [], 403),
        ("admin:clinical_patient_changelist", [], 200),
        ("admin:clinical_patient_add", [], 403),
        ("admin:review_review_changelist", [], 200),
    ],
)
def test_administrators_use_the_admin_within_their_permissions(
    url_name, args, status, objects, clients
):
    assert (
        clients[ADMINISTRATOR].get(reverse(url_name, args=args)).status_code == status
    )

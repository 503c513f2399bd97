"""Every view of a study or scan page and every download leaves an access record."""

from __future__ import annotations

import pytest
from django.contrib.contenttypes.models import ContentType
from django.urls import reverse

from portal.audit.models import AccessRecord
from tests.portal.review.conftest import analysed_scan


@pytest.fixture
def scan(study, user):
    return analysed_scan(study, user)


def _only_record(**expected):
    records = list(AccessRecord.objects.all())
    assert len(records) == 1, records
    record = records[0]
    for name, value in expected.items():
        assert getattr(record, name) == value, name
    return record


def _target(instance):
    return {
        "content_type": ContentType.objects.get_for_model(instance),
        "object_id": str(instance.pk),
    }


# Each page or download is reached by the primary key of what its record points at
# (an artifact also by its kind): (url name, extra url args, target, action, detail).
_CASES = [
    ("clinical:patient_detail", (), "patient", "view", "patient page"),
    ("clinical:study_detail", (), "study", "view", "study page"),
    ("review:scan_review", (), "scan", "view", "review page"),
    ("clinical:scan_original", (), "scan", "download", "original"),
    ("review:scan_display", (), "scan", "download", "display image"),
    ("review:study_report", (), "study", "download", "report"),
    ("review:analysis_outline", (), "analysis", "download", "outline"),
] + [
    ("analyses:artifact", (kind,), "analysis", "download", kind)
    for kind in ("mask", "overlay", "gradcam", "seg_gradcam")
]


@pytest.mark.parametrize(("url_name", "url_args", "target", "action", "detail"), _CASES)
def test_each_view_and_download_is_recorded(
    client, user, scan, url_name, url_args, target, action, detail
):
    instance = {
        "patient": scan.study.patient,
        "study": scan.study,
        "scan": scan,
        "analysis": scan.analyses.get(),
    }[target]
    client.force_login(user)
    response = client.get(
        reverse(url_name, args=[instance.pk, *url_args]), REMOTE_ADDR="10.1.2.3"
    )
    assert response.status_code == 200
    if hasattr(response, "streaming_content"):
        b"".join(response.streaming_content)
    _only_record(
        user=user,
        username=user.username,
        client_address="10.1.2.3",
        action=action,
        detail=detail,
        **_target(instance),
    )


def test_a_denied_request_leaves_no_access_record(client, make_user, scan):
    client.force_login(make_user(None))
    assert (
        client.get(reverse("clinical:scan_original", args=[scan.pk])).status_code == 403
    )
    assert not AccessRecord.objects.exists()


def test_a_forwarded_for_header_does_not_replace_the_peer_address(client, user, scan):
    client.force_login(user)
    client.get(
        reverse("clinical:study_detail", args=[scan.study_id]),
        REMOTE_ADDR="10.0.0.9",
        HTTP_X_FORWARDED_FOR="1.2.3.4",
    )
    _only_record(client_address="10.0.0.9")


def test_behind_a_trusted_proxy_the_record_carries_the_client_address(
    client, user, scan, settings
):
    settings.NUM_PROXIES = 1
    settings.TRUSTED_PROXIES = ["10.0.0.9"]
    client.force_login(user)
    client.get(
        reverse("clinical:study_detail", args=[scan.study_id]),
        REMOTE_ADDR="10.0.0.9",
        HTTP_X_FORWARDED_FOR="198.51.100.23",
    )
    _only_record(client_address="198.51.100.23")


def test_a_retry_is_recorded(client, user, scan):
    analysis = scan.analyses.get()
    analysis.status = "failed"
    analysis.save()
    client.force_login(user)
    client.post(reverse("analyses:retry", args=[analysis.pk]))
    _only_record(action="retry", **_target(analysis))

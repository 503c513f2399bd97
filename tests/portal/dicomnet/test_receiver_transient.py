"""Issue 18 finding 7: a passing fault answers A700 ("out of resources"), which senders
retry, never C000, which they take as final (and the image is lost).

A real S3 store (moto's server on loopback) that goes away mid-association: the instance
sent during the outage is answered A700, the report says it may be sent again, and the
same instance sent once the store is back is stored.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import boto3
import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import UltrasoundImageStorage

from bench.launch import free_port
from portal.clinical.models import Scan
from portal.ingest.models import UploadItem
from portal.settings import s3_storage
from tests.portal.dicomnet.conftest import SCANNER_AE
from tests.portal.ingest.factories import GREY, dicom

pytestmark = [pytest.mark.slow]

moto_server = pytest.importorskip(
    "moto.server", reason="moto[server] is not installed (requirements-dev.txt)"
)

BUCKET = "busai-outage"
REGION = "eu-west-1"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch, settings: Any) -> Iterator[dict[str, Any]]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "outage-test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "outage-test-secret")
    # One try per request: the outage is answered in seconds, not after backoffs.
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    port = free_port()
    server = moto_server.ThreadedMotoServer(
        ip_address="127.0.0.1", port=port, verbose=False
    )
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name=REGION).create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    settings.STORAGES = {
        **settings.STORAGES,
        "default": s3_storage(
            bucket=BUCKET, region=REGION, endpoint_url=endpoint, addressing_style="path"
        ),
    }
    state = {"server": server, "port": port, "running": True}
    yield state
    if state["running"]:
        server.stop()


def test_an_s3_outage_answers_a700_and_the_retry_is_stored(
    s3: dict[str, Any], receiver: dict[str, Any], enqueued: list
) -> None:
    study_uid = generate_uid()
    before, during = GREY.copy(), GREY.copy()
    before[0, 0], during[0, 0] = 1, 2
    first = pydicom.dcmread(io.BytesIO(dicom(before, study_uid=study_uid)))
    second = pydicom.dcmread(io.BytesIO(dicom(during, study_uid=study_uid)))
    ae = AE(ae_title=SCANNER_AE)
    ae.add_requested_context(UltrasoundImageStorage)

    assoc = ae.associate("127.0.0.1", receiver["port"], ae_title=receiver["ae_title"])
    assert assoc.send_c_store(first).Status == 0x0000
    s3["server"].stop()  # the store goes away
    s3["running"] = False
    status = assoc.send_c_store(second)
    assoc.release()

    assert status.Status == 0xA700
    assert "again later" in status.ErrorComment
    item = UploadItem.objects.get(outcome=UploadItem.Outcome.REJECTED)
    assert item.retryable
    assert "again later" in item.reason
    assert Scan.objects.count() == 1

    # The store is back (moto keeps its objects in this process): the retry lands.
    server = moto_server.ThreadedMotoServer(
        ip_address="127.0.0.1", port=s3["port"], verbose=False
    )
    server.start()
    s3["server"], s3["running"] = server, True
    assoc = ae.associate("127.0.0.1", receiver["port"], ae_title=receiver["ae_title"])
    assert assoc.send_c_store(second).Status == 0x0000
    assoc.release()
    assert Scan.objects.count() == 2
    assert len(enqueued) == 2


def test_a_database_outage_answers_a700_and_the_next_instance_is_stored(
    receiver: dict[str, Any], enqueued: list
) -> None:
    """The receiver's database connections are cut (as a PostgreSQL restart or a
    failover does): the instance that meets it is answered A700, and the association's
    next instance, on a new connection, is stored."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("cuts PostgreSQL connections (pg_terminate_backend)")
    study_uid = generate_uid()
    contents = []
    for seed in (1, 2, 3):
        pixels = GREY.copy()
        pixels[0, 0] = seed
        contents.append(pydicom.dcmread(io.BytesIO(dicom(pixels, study_uid=study_uid))))
    ae = AE(ae_title=SCANNER_AE)
    ae.add_requested_context(UltrasoundImageStorage)
    assoc = ae.associate("127.0.0.1", receiver["port"], ae_title=receiver["ae_title"])
    assert assoc.send_c_store(contents[0]).Status == 0x0000
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        (cut,) = cursor.fetchone()
    assert cut >= 1
    during = assoc.send_c_store(contents[1])
    after = assoc.send_c_store(contents[2])
    assoc.release()

    assert during.Status == 0xA700
    assert after.Status == 0x0000
    assert Scan.objects.count() == 2
    assert len(enqueued) == 2

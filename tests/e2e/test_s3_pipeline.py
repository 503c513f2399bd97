"""The whole flow with STORAGE_BACKEND=s3 against a real S3-compatible HTTP server.

moto's server runs on a loopback port with a private bucket; a live portal and a real
`celery -A workers worker` (which gets the S3 settings through its environment, as in
production) upload, analyse, store, download, report and export the results as DICOM.
Nothing may be written to local media, every object must be private, and no page, API
answer or redirect may hand out a URL that is not the portal's own.
"""

from __future__ import annotations

import io
import os
import re
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import highdicom as hd
import numpy as np
import pydicom
import pytest
import requests
from botocore.exceptions import ClientError
from PIL import Image

from bench.launch import free_port, tail
from ml.render import read_mask
from portal.settings import s3_storage
from tests.e2e.conftest import PIXEL_LIMIT
from tests.portal.dicomnet.conftest import read_seg
from tests.portal.ingest.factories import dicom

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

moto_server = pytest.importorskip(
    "moto.server", reason="moto[server] is not installed (requirements-dev.txt)"
)

TIMEOUT_S = float(os.environ.get("E2E_TIMEOUT", "420"))
PASSWORD = "e2e-long-password-123!"
BUCKET = "busai-scans"
GOOD_IMAGES = ("benign/benign (1).png", "malignant/malignant (1).png")
# Uploaded as an ultrasound DICOM file: its results reference the scan's own UIDs.
DICOM_IMAGE = "malignant/malignant (2).png"
PATIENT = {"identifier": "S3-PATIENT-7", "name": "Storage Testcase"}
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "portal-test-key",
    "AWS_SECRET_ACCESS_KEY": "portal-test-secret",
    "AWS_S3_REGION_NAME": "eu-west-1",
    "AWS_DEFAULT_REGION": "eu-west-1",
}
# Absolute URLs a page may carry that are not links to anything (XML namespaces).
NOT_LINKS = ("http://www.w3.org/",)
ABSOLUTE_URL = re.compile(r"""https?://[^\s"'<>)\\]+""")


@pytest.fixture
def s3_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A moto S3 server on loopback, and a private bucket that blocks public access."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    port = free_port()
    server = moto_server.ThreadedMotoServer(
        ip_address="127.0.0.1", port=port, verbose=False
    )
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = s3_client(endpoint)
    client.create_bucket(
        Bucket=BUCKET,
        ACL="private",
        CreateBucketConfiguration={
            "LocationConstraint": CREDENTIALS["AWS_S3_REGION_NAME"]
        },
    )
    client.put_public_access_block(
        Bucket=BUCKET,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    yield endpoint
    server.stop()


def s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name=CREDENTIALS["AWS_S3_REGION_NAME"]
    )


def s3_environment(endpoint: str) -> dict[str, str]:
    return {
        "STORAGE_BACKEND": "s3",
        "AWS_STORAGE_BUCKET_NAME": BUCKET,
        "AWS_S3_ENDPOINT_URL": endpoint,
        "AWS_S3_ADDRESSING_STYLE": "path",
        **CREDENTIALS,
    }


@pytest.fixture
def s3_storage_settings(settings: Any, media_root: Path, s3_server: str) -> str:
    """This process's default storage: the same S3 storage the settings build."""
    settings.STORAGE_BACKEND = "s3"
    settings.STORAGES = {
        **settings.STORAGES,
        "default": s3_storage(
            bucket=BUCKET,
            region=CREDENTIALS["AWS_S3_REGION_NAME"],
            endpoint_url=s3_server,
            addressing_style="path",
        ),
    }
    return s3_server


@pytest.fixture
def worker_env(s3_storage_settings: str) -> dict[str, str]:
    """The worker reads its storage from the environment, as a production worker does."""
    return s3_environment(s3_storage_settings)


class Portal:
    """A requests session on the live portal that keeps every response it received."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.session = requests.Session()
        self.responses: list[requests.Response] = []

    @classmethod
    def signed_in(cls, base: str, username: str, password: str) -> Portal:
        portal = cls(base)
        portal.get("/accounts/login/").raise_for_status()
        portal.post(
            "/accounts/login/", data={"username": username, "password": password}
        )
        assert "sessionid" in portal.session.cookies, f"{username} could not sign in"
        return portal

    def _keep(self, response: requests.Response) -> requests.Response:
        self.responses.extend([*response.history, response])
        return response

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        url = path if path.startswith("http") else f"{self.base}{path}"
        return self._keep(self.session.get(url, timeout=60, **kwargs))

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        url = path if path.startswith("http") else f"{self.base}{path}"
        data = {
            "csrfmiddlewaretoken": self.session.cookies["csrftoken"],
            **kwargs.pop("data", {}),
        }
        headers = {"Referer": url, **kwargs.pop("headers", {})}
        return self._keep(
            self.session.post(url, data=data, headers=headers, timeout=120, **kwargs)
        )


def image_size(content: bytes) -> tuple[int, int]:
    """(width, height) of an uploaded PNG or DICOM file."""
    if content[128:132] == b"DICM":
        dataset = pydicom.dcmread(io.BytesIO(content))
        return int(dataset.Columns), int(dataset.Rows)
    return Image.open(io.BytesIO(content)).size


def evidence_uids(report: pydicom.Dataset) -> set[str]:
    """SOP instance UIDs an SR names as the evidence it was made from."""
    return {
        str(instance.ReferencedSOPInstanceUID)
        for study in report.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for instance in series.ReferencedSOPSequence
    }


def assert_only_portal_urls(
    responses: list[requests.Response], base: str, endpoint: str
) -> None:
    """No response (body or headers) names the store, a signed URL or a foreign URL."""
    store = endpoint.split("://", 1)[1]
    for response in responses:
        where = f"{response.request.method} {response.url}"
        headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
        texts = [headers]
        kind = response.headers.get("Content-Type", "")
        if kind.startswith(("text/", "application/json")):
            texts.append(response.text)
        for text in texts:
            for marker in (store, "X-Amz-", "AWSAccessKeyId", "amazonaws.com", BUCKET):
                assert marker not in text, f"{where} carries {marker!r}"
            for url in ABSOLUTE_URL.findall(text):
                assert url.startswith(base) or url.startswith(NOT_LINKS), (
                    f"{where} hands out {url}"
                )


def test_the_whole_flow_runs_on_a_private_s3_bucket(
    live_server,
    django_user_model,
    s3_storage_settings,
    real_worker,
    busi_dir,
    media_root,
    settings,
):
    from portal.accounts.roles import RADIOLOGIST, STAFF, assign_role
    from portal.analyses.models import ARTIFACT_KINDS, Analysis
    from portal.audit.models import AccessRecord
    from portal.clinical.models import Scan

    settings.UPLOAD_MAX_PIXELS = PIXEL_LIMIT
    endpoint = s3_storage_settings
    process, log_path = real_worker
    base = live_server.url
    for username, role in (("sonographer", STAFF), ("reader", RADIOLOGIST)):
        assign_role(
            django_user_model.objects.create_user(username=username, password=PASSWORD),
            role,
        )
    django_user_model.objects.create_superuser(
        username="root", password=PASSWORD, email="root@example.org"
    )
    staff = Portal.signed_in(base, "sonographer", PASSWORD)

    # Upload: originals go to the bucket.
    patient_url = staff.post(
        "/patients/", data={**PATIENT, "birth_date": "1970-01-01"}
    ).url
    study_url = staff.post(
        patient_url, data={"accession_number": "ACC-S3", "study_date": "2026-01-01"}
    ).url.rstrip("/")
    assert "/studies/" in study_url
    study_id = int(study_url.rsplit("/", 1)[1])
    good = {Path(p).name: (busi_dir / p).read_bytes() for p in GOOD_IMAGES}
    grey = np.asarray(Image.open(busi_dir / DICOM_IMAGE).convert("L"))
    uploads = {
        **good,
        "scan.dcm": dicom(
            grey,
            patient_id=PATIENT["identifier"],
            patient_name="Testcase^Storage",
            spacing=(0.08, 0.08),
        ),
    }
    uploaded = staff.post(
        f"{study_url}/upload/",
        files=[
            ("files", (n, content, "image/png" if n in good else "application/dicom"))
            for n, content in uploads.items()
        ],
        headers={"Accept": "application/json"},
    )
    assert uploaded.status_code == 200, uploaded.text
    assert sorted(a["filename"] for a in uploaded.json()["accepted"]) == sorted(uploads)

    # The worker reads the originals from the bucket and writes its results there.
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        status = staff.get(f"{study_url}/status.json").json()
        analyses = {s["filename"]: s["analysis"] for s in status["scans"]}
        failed = {n: a["error"] for n, a in analyses.items() if a["status"] == "failed"}
        assert not failed, f"analyses failed: {failed}\n{tail(log_path)}"
        if {a["status"] for a in analyses.values()} == {"succeeded"}:
            break
        assert process.poll() is None, f"worker died:\n{tail(log_path)}"
        assert time.monotonic() < deadline, f"not done:\n{tail(log_path)}"
        time.sleep(1)

    # Page downloads, streamed from the bucket through the portal.
    masks = {}
    for filename, analysis in analyses.items():
        assert {"mask", "overlay", "gradcam", "seg_gradcam"} <= set(
            analysis["artifacts"]
        )
        for kind, url in analysis["artifacts"].items():
            artifact = staff.get(url)
            assert artifact.status_code == 200, (kind, artifact.status_code)
            image = Image.open(io.BytesIO(artifact.content))
            assert image.format == "PNG"
            if kind == "mask":
                assert image.size == image_size(uploads[filename])
                masks[filename] = read_mask(artifact.content)
    scans = list(Scan.objects.filter(study_id=study_id).order_by("pk"))
    for scan in scans:
        download = staff.get(f"/scans/{scan.pk}/original")
        assert download.status_code == 200
        assert download.content == uploads[scan.original_filename]
    assert staff.get(study_url + "/").status_code == 200

    # A radiologist reads from the bucket and signs; the report embeds the images.
    reader = Portal.signed_in(base, "reader", PASSWORD)
    scan = scan_signed = next(s for s in scans if s.original_filename in good)
    analysis_row = scan.analyses.get()
    review_url = f"/scans/{scan.pk}/review/"
    assert reader.get(review_url).status_code == 200
    assert reader.get(f"/scans/{scan.pk}/display.png").status_code == 200
    assert reader.get(f"/analyses/{analysis_row.pk}/outline.png").status_code == 200
    signed = reader.post(
        review_url,
        data={
            "analysis": analysis_row.pk,
            "agrees_with_model": "yes",
            "label": "",
            "birads": "3",
            "note": "read on S3",
            "action": "sign",
        },
        allow_redirects=False,
    )
    assert signed.status_code == 302, signed.text[:2000]
    report = staff.get(f"/studies/{study_id}/report.pdf")
    assert report.status_code == 200
    assert report.content.startswith(b"%PDF")
    assert len(report.content) > 20_000  # the images are in it, not only text

    # DICOM export: the objects are made from the scan and the mask in the bucket and
    # downloaded through the portal's checked views (the links of the review page).
    review_page = reader.get(review_url).text
    for kind in ("seg", "sr", "overlay", "source", "zip"):
        assert f"/analyses/{analysis_row.pk}/dicom/{kind}" in review_page, kind
    exported: dict[str, dict[str, bytes]] = {}
    for each in scans:
        name, analysis_id = each.original_filename, each.analyses.get().pk
        # A scan uploaded as DICOM is its own source; a PNG gets a secondary capture.
        kinds = ["seg", "sr", "overlay"] + (["source"] if name in good else [])
        exported[name] = {}
        for kind in kinds:
            response = reader.get(f"/analyses/{analysis_id}/dicom/{kind}")
            assert response.status_code == 200, (name, kind)
            assert response.headers["Content-Type"] == "application/dicom"
            exported[name][kind] = response.content
        if name not in good:
            assert (
                reader.get(f"/analyses/{analysis_id}/dicom/source").status_code == 404
            )
    for name, contents in exported.items():
        objects = {k: pydicom.dcmread(io.BytesIO(v)) for k, v in contents.items()}
        if name in good:
            source = objects["source"]
            uploaded_pixels = Image.open(io.BytesIO(uploads[name])).convert("RGB")
            np.testing.assert_array_equal(source.pixel_array, uploaded_pixels)
        else:
            source = pydicom.dcmread(io.BytesIO(uploads[name]))
        for dataset in objects.values():
            assert dataset.PatientID == PATIENT["identifier"]
            assert dataset.StudyInstanceUID == source.StudyInstanceUID
        seg = read_seg(contents["seg"])
        referenced = seg.ReferencedSeriesSequence[0]
        assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
        assert [
            i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence
        ] == [source.SOPInstanceUID]
        lesion = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[source.SOPInstanceUID], segment_numbers=[1]
        )
        np.testing.assert_array_equal(lesion[0, ..., 0].astype(bool), masks[name])
        overlay = objects["overlay"]
        assert (overlay.Rows, overlay.Columns) == (source.Rows, source.Columns)
        assert overlay.SourceImageSequence[0].ReferencedSOPInstanceUID == (
            source.SOPInstanceUID
        )
        sr = hd.sr.srread(io.BytesIO(contents["sr"]))
        assert evidence_uids(sr) == {source.SOPInstanceUID, seg.SOPInstanceUID}
        # The signed scan's SR carries the reading; the others are the model's alone.
        signed_here = name == scan_signed.original_filename
        assert sr.VerificationFlag == ("VERIFIED" if signed_here else "UNVERIFIED")

    # The API hands out portal URLs, and they work.
    token = requests.post(
        f"{base}/api/v1/auth/token/",
        data={"username": "sonographer", "password": PASSWORD},
        timeout=30,
    ).json()["token"]
    api = Portal(base)
    api.session.headers["Authorization"] = f"Token {token}"
    detail = api.get(f"/api/v1/studies/{study_id}/").json()
    urls = []
    for scan_json in detail["scans"]:
        urls.append(scan_json["original_url"])
        latest = scan_json["latest_analysis"]
        artifact_urls = [
            latest[f"{kind}_url"] for kind in ARTIFACT_KINDS if latest[f"{kind}_url"]
        ]
        assert len(artifact_urls) >= 4, latest
        one = api.get(f"/api/v1/analyses/{latest['id']}/").json()
        assert [
            one[f"{kind}_url"] for kind in ARTIFACT_KINDS if one[f"{kind}_url"]
        ] == artifact_urls
        urls += artifact_urls
    for url in urls:
        assert url.startswith(base), url
        assert api.get(url).status_code == 200, url
    # ... and exports the same DICOM objects as the pages.
    archive = api.get(f"/api/v1/analyses/{analysis_row.pk}/dicom/zip/")
    assert archive.status_code == 200
    with zipfile.ZipFile(io.BytesIO(archive.content)) as bundle:
        zipped = {
            name.rsplit("-", 1)[1].removesuffix(".dcm"): pydicom.dcmread(
                io.BytesIO(bundle.read(name))
            )
            for name in bundle.namelist()
        }
    pages = exported[scan_signed.original_filename]
    assert set(zipped) == set(pages)
    for kind, dataset in zipped.items():
        assert dataset.SOPInstanceUID == (
            pydicom.dcmread(io.BytesIO(pages[kind])).SOPInstanceUID
        ), kind
    downloads = AccessRecord.objects.filter(
        action=AccessRecord.Action.DOWNLOAD, detail__startswith="dicom "
    )
    assert downloads.count() == sum(map(len, exported.values())) + 1

    # The admin shows files as links to the portal's views, never storage URLs.
    root = Portal.signed_in(base, "root", PASSWORD)
    assert root.get(f"/admin/clinical/scan/{scan.pk}/change/").status_code == 200
    assert (
        root.get(f"/admin/analyses/analysis/{analysis_row.pk}/change/").status_code
        == 200
    )

    for session in (staff, reader, api, root):
        assert_only_portal_urls(session.responses, base, endpoint)

    # Everything is in the bucket, nothing on local disk, and every object is private.
    assert [p for p in media_root.rglob("*") if p.is_file()] == []
    client = s3_client(endpoint)
    keys = {
        obj["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        for obj in page.get("Contents", [])
    }
    # Originals, display copies, model inputs, the worker's outputs and the pictures the
    # portal drew on demand for the downloads above.
    expected = set()
    for scan in Scan.objects.filter(pk__in=[s.pk for s in scans]):
        assert scan.model_input, scan
        expected |= {scan.original.name, scan.display.name, scan.model_input.name}
    for analysis in Analysis.objects.filter(scan__in=scans):
        expected |= {getattr(analysis, k).name for k in ARTIFACT_KINDS}
    expected.discard("")
    assert len(expected) >= len(scans) * (3 + 4), expected
    assert expected <= keys, expected - keys
    for key in keys:
        assert PATIENT["identifier"] not in key and "Testcase" not in key, key
        grants = client.get_object_acl(Bucket=BUCKET, Key=key)["Grants"]
        assert all(g["Grantee"]["Type"] == "CanonicalUser" for g in grants), (
            key,
            grants,
        )
        anonymous = requests.get(f"{endpoint}/{BUCKET}/{key}", timeout=30)
        assert anonymous.status_code == 403, key
    bucket_grants = client.get_bucket_acl(Bucket=BUCKET)["Grants"]
    assert all(g["Grantee"]["Type"] == "CanonicalUser" for g in bucket_grants)
    with pytest.raises(ClientError, match="NoSuchBucketPolicy"):
        client.get_bucket_policy(Bucket=BUCKET)

"""The S3 storage class: private objects whatever the options, and no storage URLs."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from portal.settings import s3_storage
from portal.storage import PrivateS3Storage, StorageURLRefused


def test_objects_are_private_even_if_the_options_say_otherwise():
    storage = PrivateS3Storage(bucket_name="scans", default_acl="public-read")
    assert storage.default_acl == "private"


def test_the_storage_refuses_to_build_a_url():
    storage = PrivateS3Storage(bucket_name="scans")
    with pytest.raises(StorageURLRefused, match="download views"):
        storage.url("scans/1/original.png")


def test_s3_settings_need_a_bucket_and_a_web_endpoint():
    with pytest.raises(ImproperlyConfigured, match="AWS_STORAGE_BUCKET_NAME"):
        s3_storage(bucket="", region="", endpoint_url="", addressing_style="auto")
    with pytest.raises(ImproperlyConfigured, match="AWS_S3_ENDPOINT_URL"):
        s3_storage(
            bucket="scans",
            region="",
            endpoint_url="minio.internal:9000",
            addressing_style="path",
        )
    config = s3_storage(
        bucket="scans",
        region="eu-west-1",
        endpoint_url="https://minio.internal:9000",
        addressing_style="path",
    )
    assert config["BACKEND"] == "portal.storage.PrivateS3Storage"
    assert config["OPTIONS"]["addressing_style"] == "path"

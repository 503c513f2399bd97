"""The S3 storage of originals and artifacts: private objects, and no URL to them.

Files leave storage only through the portal's views (portal/storage_views.py), which
check permissions and write an access record. A storage URL (for S3 a presigned one,
which works for whoever holds it for its lifetime) would bypass both, so `url()` refuses
instead of building one: a page or serializer that asks for it fails in the tests rather
than leaking a link. Every object is written with the private ACL, whatever the bucket's
default.
"""

from __future__ import annotations

from typing import Any

from storages.backends.s3 import S3Storage


class StorageURLRefused(RuntimeError):
    """Raised when code asks storage for a direct URL to a stored file."""


class PrivateS3Storage(S3Storage):
    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        # Not an option: the objects are patient data.
        self.default_acl = "private"

    def url(self, name: str, *args: Any, **kwargs: Any) -> str:
        raise StorageURLRefused(
            "stored files are served only through the portal's download views, "
            "never by a storage URL"
        )

"""Bulk ingestion: many files, zips and DICOM into scans, with a report row per file.

Each file is validated on its own (decoded from its content, whatever its name) and then
stored in its own short transaction: an accepted file is committed and its analysis sent
to the workers at once, while the rest of the upload is still being read, and one bad
file never takes the others down. The same image (same sha256) is linked to its
existing scan instead of being stored and analysed again. Nothing here logs a file name
or a DICOM tag: those can carry patient data.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import BinaryIO

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone

from portal.analyses.modelinfo import (
    ModelVersionUnavailable,
    current_model_version,
    model_input_side,
)
from portal.analyses.models import Analysis
from portal.analyses.services import scan_submit
from portal.clinical.models import Scan, Study
from portal.clinical.uploads import (
    UploadRejected,
    ValidatedUpload,
    safe_filename,
    validate_content,
)
from portal.ingest.archives import (
    ArchiveBudget,
    ArchiveLimits,
    ArchiveReport,
    human_bytes,
    is_zip,
    iter_zip,
    other_archive_kind,
)
from portal.ingest.locks import advisory_lock
from portal.ingest.models import UploadBatch, UploadItem
from portal.ingest.placement import IntoStudy, Placement

logger = logging.getLogger(__name__)

Outcome = UploadItem.Outcome
ACCEPTED_KINDS = "PNG, JPEG, BMP, TIFF or DICOM"
# Files are decoded (validated) in a few threads while the request's own thread stores
# the ones before them: decoding releases the GIL. At most DECODE_WINDOW files are read
# and not yet stored, which bounds the memory an upload can take.
DECODE_THREADS = 2
DECODE_WINDOW = 4
# A file whose transaction met a simultaneous one on a unique constraint is stored again
# from the start this many times (the locks in placement make this rare).
STORE_ATTEMPTS = 3


@dataclass(frozen=True)
class IncomingFile:
    """A file to ingest: an uploaded file, or a file found by the import command."""

    name: str
    file: BinaryIO
    size: int | None = None
    # Folders above the file, relative to the import root (placement by folder).
    folders: tuple[str, ...] = ()


@dataclass
class IngestResult:
    batch: UploadBatch
    items: list[UploadItem] = field(default_factory=list)

    def of(self, outcome: str) -> list[UploadItem]:
        return [item for item in self.items if item.outcome == outcome]


def archive_limits() -> ArchiveLimits:
    return ArchiveLimits(
        max_files=settings.INGEST_ZIP_MAX_FILES,
        max_total_bytes=settings.INGEST_ZIP_MAX_TOTAL_BYTES,
        max_member_bytes=settings.UPLOAD_MAX_BYTES,
        max_ratio=settings.INGEST_ZIP_MAX_RATIO,
        max_depth=settings.INGEST_ZIP_MAX_DEPTH,
    )


def _lock_digest(sha256: str) -> None:
    """Serialise ingestion of the same image, so two uploads cannot both store it."""
    advisory_lock("image", sha256)


def _archive_name(archive: str) -> str:
    """The archive a file came from, as UploadItem.archive stores it ("" for none)."""
    return safe_filename(archive)[:255] if archive else ""


def transient_errors() -> tuple[type[BaseException], ...]:
    """Exceptions of a passing fault: the database, the storage (a disk, or S3 and its
    client library) or the queue. A file refused for one of these can be sent again."""
    errors: list[type[BaseException]] = [OSError, DatabaseError]
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # S3 support not installed
        pass
    else:
        errors += [BotoCoreError, ClientError]
    try:
        from kombu.exceptions import OperationalError as QueueError
    except ImportError:
        pass
    else:
        errors.append(QueueError)
    return tuple(errors)


def _latest_analysis(scan: Scan) -> Analysis | None:
    return scan.analyses.order_by("-queued_at", "-pk").first()


class BatchIngester:
    def __init__(
        self,
        *,
        batch: UploadBatch,
        placement: Placement,
        uploaded_by: AbstractBaseUser,
        model_version: str,
    ) -> None:
        self.batch = batch
        self.placement = placement
        self.uploaded_by = uploaded_by
        self.model_version = model_version
        self.model_input_side = model_input_side(model_version=model_version)
        self.limits = archive_limits()
        self.budget = ArchiveBudget()
        self.result = IngestResult(batch)
        self.decoded = 0  # files that were images, whatever became of them
        self._decoder = ThreadPoolExecutor(
            max_workers=DECODE_THREADS, thread_name_prefix="ingest-decode"
        )
        self._pending: deque[tuple[Future[ValidatedUpload], str, str, tuple]] = deque()

    def ingest(self, incoming: IncomingFile) -> None:
        incoming.file.seek(0)
        head = incoming.file.read(512)
        incoming.file.seek(0)
        if is_zip(head):
            self._ingest_zip(incoming)
            return
        other = other_archive_kind(head)
        if other:
            self.reject(
                incoming.name,
                f"this is {other}; only zip archives are opened (or send the images "
                "themselves)",
            )
            return
        max_bytes = self.limits.max_member_bytes
        if incoming.size is not None and incoming.size > max_bytes:
            self.reject(
                incoming.name,
                f"file is {human_bytes(incoming.size)}, larger than the "
                f"{human_bytes(max_bytes)} limit",
            )
            return
        content = incoming.file.read(max_bytes + 1)
        if len(content) > max_bytes:
            self.reject(
                incoming.name, f"file is larger than the {human_bytes(max_bytes)} limit"
            )
            return
        self._ingest_content(incoming.name, content, folders=incoming.folders)

    def ingest_now(self, incoming: IncomingFile) -> UploadItem:
        """Ingest one file and wait for its outcome (the DICOM receiver answers each
        instance with it); zips are not expected here and get the outcome of their last
        row."""
        before = len(self.result.items)
        self.ingest(incoming)
        self._drain()
        added = self.result.items[before:]
        if not added:  # an empty zip: ingest() recorded nothing of its own
            self.reject(incoming.name, "nothing in it could be read")
            added = self.result.items[before:]
        return added[-1]

    def _ingest_zip(self, incoming: IncomingFile) -> None:
        report = ArchiveReport()
        decoded_before = self.decoded
        for member in iter_zip(
            incoming.file, limits=self.limits, budget=self.budget, report=report
        ):
            if member.error:
                self.reject(member.name, member.error, archive=incoming.name)
                continue
            folders = incoming.folders + tuple(
                part
                for part in PurePosixPath(member.name.replace("\\", "/")).parts[:-1]
                if not part.lower().endswith(".zip")
            )
            self._ingest_content(
                member.name,
                member.content or b"",
                archive=incoming.name,
                folders=folders,
            )
        self._drain()  # the zip's own rows need every member's outcome
        if report.errors:
            self.reject(incoming.name, "; ".join(report.errors))
        elif report.files == 0:
            self.reject(incoming.name, "the zip is empty: it holds no files")
        elif self.decoded == decoded_before:
            self.reject(
                incoming.name,
                f"no images in the zip: none of its {report.files} file(s) is a "
                f"{ACCEPTED_KINDS} image that could be read (each has its reason)",
            )

    def _ingest_content(
        self,
        name: str,
        content: bytes,
        *,
        archive: str = "",
        folders: tuple[str, ...] = (),
    ) -> None:
        future = self._decoder.submit(
            validate_content,
            filename=name,
            content=content,
            model_input_side=self.model_input_side,
        )
        self._pending.append((future, name, archive, folders))
        while len(self._pending) > DECODE_WINDOW:
            self._store_next()

    def _drain(self) -> None:
        while self._pending:
            self._store_next()

    def _store_next(self) -> None:
        """Store the oldest decoded file: files are stored in the order they came."""
        future, name, archive, folders = self._pending.popleft()
        try:
            upload = future.result()
        except UploadRejected as exc:
            self.reject(name, str(exc), archive=archive)
            return
        self.decoded += 1
        retryable = False
        try:
            item = self._store_retrying(upload, archive=archive, folders=folders)
        except UploadRejected as exc:
            reason = str(exc)
        except IntegrityError:
            # Met a simultaneous upload of the same patient or study every time.
            logger.warning("upload %s: a file met a simultaneous upload", self.batch.pk)
            retryable = True
            reason = (
                "met a simultaneous upload of this patient or study; send it again "
                "(it collided with that upload each time it was stored)"
            )
        except transient_errors():
            # Storage, database or queue trouble with this file: the others still go on.
            logger.exception("upload %s: a file could not be stored", self.batch.pk)
            retryable = True
            reason = (
                "could not be stored now; send or upload it again later (the error is "
                "logged for the administrators)"
            )
        else:
            self.result.items.append(item)
            return
        self.reject(
            name, reason, archive=archive, sha256=upload.sha256, retryable=retryable
        )

    def _store_retrying(
        self, upload: ValidatedUpload, *, archive: str, folders: tuple[str, ...]
    ) -> UploadItem:
        for attempt in range(1, STORE_ATTEMPTS + 1):
            try:
                return self._store(upload, archive=archive, folders=folders)
            except IntegrityError:
                if attempt == STORE_ATTEMPTS:
                    raise
                logger.info(
                    "upload %s: a file met a simultaneous upload; storing it again",
                    self.batch.pk,
                )
        raise AssertionError("unreachable")

    def _store(
        self, upload: ValidatedUpload, *, archive: str, folders: tuple[str, ...]
    ) -> UploadItem:
        with transaction.atomic():
            _lock_digest(upload.sha256)
            existing = (
                Scan.objects.filter(sha256=upload.sha256)
                .select_related("study")
                .order_by("pk")
                .first()
            )
            if existing is not None:
                where = (
                    ""
                    if self.batch.study_id == existing.study_id
                    else f" in study {existing.study_id}"
                )
                return UploadItem.objects.create(
                    batch=self.batch,
                    filename=upload.original_filename[:500],
                    archive=_archive_name(archive),
                    outcome=Outcome.DUPLICATE,
                    reason=f"already uploaded as scan {existing.pk}{where}; not analysed again",
                    sha256=upload.sha256,
                    scan=existing,
                    analysis=_latest_analysis(existing),
                )
            flags: list[str] = []
            study = self.placement.study_for(upload, folders, flags=flags)
            scan = scan_submit(
                study=study,
                upload=upload,
                uploaded_by=self.uploaded_by,
                model_version=self.model_version,
            )
            return UploadItem.objects.create(
                batch=self.batch,
                filename=upload.original_filename[:500],
                archive=_archive_name(archive),
                outcome=Outcome.ACCEPTED,
                review_flag="; ".join(flags),
                sha256=upload.sha256,
                scan=scan,
                analysis=scan.analyses.get(model_version=self.model_version),
            )

    def reject(
        self,
        name: str,
        reason: str,
        *,
        archive: str = "",
        sha256: str = "",
        retryable: bool = False,
    ) -> None:
        """Record a refused file (also used by callers that refuse before reading).

        retryable: refused for a passing fault, worth sending again. When even the
        report row cannot be written (the database is down), the row is kept in memory
        only, so that the caller still learns the outcome.
        """
        item = UploadItem(
            batch=self.batch,
            filename=safe_filename(name or "(no name)")[:500],
            archive=_archive_name(archive),
            outcome=Outcome.REJECTED,
            reason=reason,
            sha256=sha256,
            retryable=retryable,
        )
        try:
            item.save()
        except DatabaseError:
            if not retryable:
                raise
            logger.exception(
                "upload %s: the report row of a refused file was not saved",
                self.batch.pk,
            )
        self.result.items.append(item)

    def close(self) -> None:
        """Stop the decoder threads (files not stored yet are dropped)."""
        self._decoder.shutdown(wait=True, cancel_futures=True)

    def finish(self) -> IngestResult:
        try:
            self._drain()
        finally:
            self.close()
        items = self.result.items
        self.batch.accepted_count = sum(i.outcome == Outcome.ACCEPTED for i in items)
        self.batch.duplicate_count = sum(i.outcome == Outcome.DUPLICATE for i in items)
        self.batch.rejected_count = sum(i.outcome == Outcome.REJECTED for i in items)
        self.batch.finished_at = timezone.now()
        self.batch.save(
            update_fields=[
                "accepted_count",
                "duplicate_count",
                "rejected_count",
                "finished_at",
            ]
        )
        logger.info(
            "upload %s: %d accepted, %d duplicates, %d rejected",
            self.batch.pk,
            self.batch.accepted_count,
            self.batch.duplicate_count,
            self.batch.rejected_count,
        )
        return self.result


def batch_ingest(
    *,
    files: Iterable[IncomingFile],
    placement: Placement,
    uploaded_by: AbstractBaseUser,
    model_version: str,
    source: str,
    study: Study | None = None,
) -> IngestResult:
    """Ingest every file (zips member by member) and return the batch with its report."""
    batch = UploadBatch.objects.create(
        study=study, source=source, created_by=uploaded_by
    )
    ingester = BatchIngester(
        batch=batch,
        placement=placement,
        uploaded_by=uploaded_by,
        model_version=model_version,
    )
    try:
        for incoming in files:
            ingester.ingest(incoming)
        return ingester.finish()
    finally:
        ingester.close()


def upload_to_study(
    *,
    study: Study,
    files: Iterable[object],
    uploaded_by: AbstractBaseUser,
    source: str,
    model_version: str | None = None,
) -> IngestResult:
    """The browser's and the API's upload: Django UploadedFiles, into one study.

    Analyses are queued for the installed model (or `model_version`). With no model
    installed nothing could be analysed, so the whole upload is refused before a file
    is read: ModelVersionUnavailable, which the page and the API show as "paused".
    """
    if model_version is None:
        try:
            model_version = current_model_version()
        except ModelVersionUnavailable as exc:
            logger.error("upload refused: %s", exc)
            raise
    incoming = [
        IncomingFile(name=f.name or "(no name)", file=f, size=f.size)  # type: ignore[attr-defined]
        for f in files
    ]
    return batch_ingest(
        files=incoming,
        placement=IntoStudy(study),
        uploaded_by=uploaded_by,
        model_version=model_version,
        source=source,
        study=study,
    )

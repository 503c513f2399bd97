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
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import BinaryIO, Protocol

import numpy as np
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone

from portal.analyses.models import Analysis
from portal.clinical.models import Patient, Scan, Study
from portal.clinical.services import patient_create, scan_create, study_create
from portal.clinical.uploads import UploadRejected, ValidatedUpload, validate_content
from portal.ingest.archives import (
    ArchiveBudget,
    ArchiveLimits,
    ArchiveReport,
    human_bytes,
    is_zip,
    iter_zip,
    other_archive_kind,
)
from portal.ingest.dicom import DicomIdentity
from portal.ingest.models import UploadBatch, UploadItem

logger = logging.getLogger(__name__)

Outcome = UploadItem.Outcome
ACCEPTED_KINDS = "PNG, JPEG, BMP, TIFF or DICOM"
# Files are decoded (validated) in a few threads while the request's own thread stores
# the ones before them: decoding releases the GIL. At most DECODE_WINDOW files are read
# and not yet stored, which bounds the memory an upload can take.
DECODE_THREADS = 2
DECODE_WINDOW = 4


@dataclass(frozen=True)
class IncomingFile:
    """A file to ingest: an uploaded file, or a file found by the import command."""

    name: str
    file: BinaryIO
    size: int | None = None
    # Folders above the file, relative to the import root (placement by folder).
    folders: tuple[str, ...] = ()


class Placement(Protocol):
    def study_for(self, upload: ValidatedUpload, folders: tuple[str, ...]) -> Study:
        """The study a validated file belongs to; raises UploadRejected if there is none."""


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


class IntoStudy:
    """Everything goes into one study; a DICOM file must agree with it."""

    def __init__(self, study: Study) -> None:
        self.study = study

    def study_for(self, upload: ValidatedUpload, folders: tuple[str, ...]) -> Study:
        if not upload.image.dicom:
            return self.study
        identity = DicomIdentity.from_tags(upload.image.dicom)
        patient = self.study.patient
        if (
            identity.patient_identifier
            and identity.patient_identifier != patient.identifier
        ):
            raise UploadRejected(
                f"this DICOM file is for patient ID {identity.patient_identifier}, not "
                f"this study's patient ({patient.identifier}); upload it to a study of "
                "that patient"
            )
        if identity.study_instance_uid:
            _adopt_study_instance_uid(self.study, identity)
        return self.study


def _adopt_study_instance_uid(study: Study, identity: DicomIdentity) -> None:
    """Give a study the UID of its first DICOM file; refuse files of another exam."""
    uid = identity.study_instance_uid
    current = Study.objects.select_for_update().get(pk=study.pk)
    if current.study_instance_uid == uid:
        return
    if current.study_instance_uid:
        raise UploadRejected(
            "this DICOM file is from another examination (its study instance UID is "
            "not this study's); upload it to the study of that examination"
        )
    other = Study.objects.filter(study_instance_uid=uid).first()
    if other is not None:
        raise UploadRejected(
            f"this DICOM file belongs to study {other.pk} (same study instance UID); "
            "upload it there"
        )
    current.study_instance_uid = uid
    fields = ["study_instance_uid"]
    if not current.accession_number and identity.accession_number:
        current.accession_number = identity.accession_number
        fields.append("accession_number")
    current.save(update_fields=fields)
    study.study_instance_uid = current.study_instance_uid
    study.accession_number = current.accession_number


class ByTagsAndFolders:
    """Place files by their DICOM tags, else by folders named PATIENT/STUDY/.

    A DICOM file's own patient ID, study instance UID and accession number win; other
    images take the patient's hospital identifier from the first folder and the study's
    accession number from the second. Patients and studies are matched or created.
    """

    def __init__(self, *, created_by: AbstractBaseUser) -> None:
        self.created_by = created_by

    def study_for(self, upload: ValidatedUpload, folders: tuple[str, ...]) -> Study:
        identity = (
            DicomIdentity.from_tags(upload.image.dicom) if upload.image.dicom else None
        )
        identifier = (identity and identity.patient_identifier) or (
            folders[0] if folders else ""
        )
        if not identifier:
            raise UploadRejected(
                "cannot tell which patient this file is for: put it under a folder "
                "named by the patient's hospital identifier (PATIENT/STUDY/file), "
                "or import it with --study"
            )
        patient = self._patient(identifier[:64], identity)
        uid = identity.study_instance_uid if identity else ""
        if uid:
            study = Study.objects.filter(study_instance_uid=uid).first()
            if study is not None:
                if study.patient_id != patient.pk:
                    raise UploadRejected(
                        f"its study instance UID belongs to study {study.pk} of another "
                        "patient; check the file's patient ID"
                    )
                return study
        accession = (identity and identity.accession_number) or (
            folders[1][:64] if len(folders) > 1 else ""
        )
        if not accession and not uid:
            raise UploadRejected(
                "cannot tell which study this file is for: put it in a study folder "
                "inside the patient's folder (PATIENT/STUDY/file), or import it with "
                "--study"
            )
        study = None
        if accession:
            study = (
                Study.objects.select_for_update()
                .filter(patient=patient, accession_number=accession)
                .order_by("pk")
                .first()
            )
        if study is None:
            study = study_create(
                patient=patient,
                created_by=self.created_by,
                accession_number=accession,
                study_date=identity.study_date if identity else None,
                description="Imported",
            )
        if uid and not study.study_instance_uid:
            study.study_instance_uid = uid
            study.save(update_fields=["study_instance_uid"])
        return study

    def _patient(self, identifier: str, identity: DicomIdentity | None) -> Patient:
        patient = Patient.objects.filter(identifier=identifier).first()
        if patient is not None:
            return patient
        name = identity.patient_name if identity else ""
        return patient_create(
            identifier=identifier,
            name=name or "(name not given)",
            birth_date=identity.birth_date if identity else None,
        )


class ByDicomTags(ByTagsAndFolders):
    """Place DICOM instances received over the network by their own tags only."""

    def study_for(self, upload: ValidatedUpload, folders: tuple[str, ...]) -> Study:
        identity = (
            DicomIdentity.from_tags(upload.image.dicom) if upload.image.dicom else None
        )
        if identity is None:
            raise UploadRejected("not a DICOM instance")
        if not identity.patient_identifier:
            raise UploadRejected(
                "it has no Patient ID (0010,0020), so it cannot be matched to a patient"
            )
        if not identity.study_instance_uid and not identity.accession_number:
            raise UploadRejected(
                "it has neither a Study Instance UID (0020,000D) nor an Accession "
                "Number (0008,0050), so it cannot be matched to a study"
            )
        return super().study_for(upload, ())


def _validate(name: str, content: bytes) -> ValidatedUpload:
    """Decode a file (in a decoder thread) and keep only what storing it needs.

    The decoded pixels are dropped here: a scan needs the image's size, format and
    DICOM tags, and the pixels of a large image would otherwise wait in the window.
    """
    upload = validate_content(filename=name, content=content)
    pixels = upload.image.pixels
    placeholder = np.broadcast_to(np.zeros((), np.uint8), pixels.shape)  # no memory
    return replace(upload, image=replace(upload.image, pixels=placeholder))


def _lock_digest(sha256: str) -> None:
    """Serialise ingestion of the same image, so two uploads cannot both store it.

    PostgreSQL: a transaction-scoped advisory lock on the digest. SQLite: transactions
    already take the write lock when they begin (IMMEDIATE mode in settings).
    """
    if connection.vendor == "postgresql":
        key = int.from_bytes(bytes.fromhex(sha256[:16]), "big", signed=True)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [key])


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
        future = self._decoder.submit(_validate, name, content)
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
        try:
            item = self._store(upload, archive=archive, folders=folders)
        except UploadRejected as exc:
            self.reject(name, str(exc), archive=archive, sha256=upload.sha256)
            return
        except IntegrityError:
            # Another upload created the same patient or study UID at the same moment.
            logger.warning("upload %s: a file met a simultaneous upload", self.batch.pk)
            self.reject(
                name,
                "it collided with another upload of the same patient or study at the "
                "same moment; upload it again",
                archive=archive,
                sha256=upload.sha256,
            )
            return
        except (OSError, DatabaseError):
            # Storage or database trouble with this file: the others still go on.
            logger.exception("upload %s: a file could not be stored", self.batch.pk)
            self.reject(
                name,
                "it could not be stored (the error is logged for the administrators); "
                "upload it again later",
                archive=archive,
                sha256=upload.sha256,
            )
            return
        self.result.items.append(item)

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
                    archive=archive[:255],
                    outcome=Outcome.DUPLICATE,
                    reason=f"already uploaded as scan {existing.pk}{where}; not analysed again",
                    sha256=upload.sha256,
                    scan=existing,
                    analysis=_latest_analysis(existing),
                )
            study = self.placement.study_for(upload, folders)
            scan = scan_create(
                study=study,
                upload=upload,
                uploaded_by=self.uploaded_by,
                model_version=self.model_version,
            )
            return UploadItem.objects.create(
                batch=self.batch,
                filename=upload.original_filename[:500],
                archive=archive[:255],
                outcome=Outcome.ACCEPTED,
                sha256=upload.sha256,
                scan=scan,
                analysis=scan.analyses.get(model_version=self.model_version),
            )

    def reject(
        self, name: str, reason: str, *, archive: str = "", sha256: str = ""
    ) -> None:
        """Record a refused file (also used by callers that refuse before reading)."""
        self.result.items.append(
            UploadItem.objects.create(
                batch=self.batch,
                filename=(name or "(no name)")[:500],
                archive=archive[:255],
                outcome=Outcome.REJECTED,
                reason=reason,
                sha256=sha256,
            )
        )

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
    model_version: str,
    source: str,
) -> IngestResult:
    """The browser's and the API's upload: Django UploadedFiles, into one study."""
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

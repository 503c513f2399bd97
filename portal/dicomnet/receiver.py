"""The DICOM receiver (C-STORE SCP): scanners and PACS push ultrasound images here.

Every received instance goes through the same ingestion as an upload
(portal/ingest/services.py): decoded to validate it, matched to its patient and study by
its own tags, deduplicated by SHA-256, stored, and its analysis queued on commit. One
association is one upload batch, whose report (/uploads/<id>/) lists each instance with
its outcome; a refused instance gets a failure status with the reason and the
association goes on with the next one. An instance refused for a passing fault (the
database, the storage - a disk or S3 - or the queue, or a simultaneous association that
kept colliding) is answered A700 "out of resources", a status senders retry; C000
("cannot understand") is kept for instances that would be refused again.

Only calling AE titles on DICOM_ALLOWED_CALLING_AE_TITLES get an association; everyone
else is rejected before sending anything. An entry TITLE@ADDRESS (an IP address or a
network) accepts that title only from that address, so a title copied onto another
machine is rejected too. With an SSL context (DICOM_TLS_*) the listener speaks TLS
only. Nothing here logs a tag value: only ids, AE titles and peer addresses.
"""

from __future__ import annotations

import io
import ipaddress
import logging
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, Association, evt
from pynetdicom.sop_class import (
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from ml.decode import readable_transfer_syntaxes
from portal.analyses.modelinfo import current_model_version
from portal.ingest.models import UploadBatch, UploadItem
from portal.ingest.placement import ByDicomTags
from portal.ingest.services import BatchIngester, IncomingFile, transient_errors

logger = logging.getLogger(__name__)

# Older scanners still send the retired ultrasound classes.
ULTRASOUND_IMAGE_STORAGE_RETIRED = UID("1.2.840.10008.5.1.4.1.1.6")
ULTRASOUND_MULTIFRAME_IMAGE_STORAGE_RETIRED = UID("1.2.840.10008.5.1.4.1.1.3")
# Image storage SOP classes an ultrasound analysis makes sense for.
STORAGE_SOP_CLASSES = (
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    ULTRASOUND_IMAGE_STORAGE_RETIRED,
    ULTRASOUND_MULTIFRAME_IMAGE_STORAGE_RETIRED,
    SecondaryCaptureImageStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
)
SUCCESS = 0x0000
# "Cannot understand" (C000-CFFF): the instance was received and refused; the reason is
# in the Error Comment and in the upload report.
REFUSED = 0xC000
OUT_OF_RESOURCES = 0xA700
ERROR_COMMENT_LENGTH = 64  # LO


# What require_calling_aet answers a peer no entry allows: no AE title equals it.
NOBODY = "\0"


@dataclass(frozen=True)
class AllowedCaller:
    """One allow-list entry: an AE title, from anywhere or from one address/network."""

    ae_title: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None

    @classmethod
    def parse(cls, entry: str) -> AllowedCaller:
        title, at, address = entry.rpartition("@")
        if not at:
            return cls(entry.strip())
        return cls(title.strip(), ipaddress.ip_network(address.strip(), strict=False))

    def allows(self, address: str | None) -> bool:
        if self.network is None:
            return True
        try:
            return ipaddress.ip_address(address or "") in self.network
        except ValueError:
            return False


class PairedAE(AE):
    """An AE whose calling AE title check also looks at the peer's address.

    pynetdicom checks `require_calling_aet` while negotiating, in the association's
    own thread, with nothing else to go on; answered per association here, it lists
    only the titles allowed from that peer's address.
    """

    def __init__(self, *, ae_title: str, allowed: list[AllowedCaller]) -> None:
        super().__init__(ae_title=ae_title)
        self.allowed_callers = allowed
        self.require_calling_aet = list(dict.fromkeys(a.ae_title for a in allowed))

    @property  # type: ignore[override]
    def require_calling_aet(self) -> list[str]:
        titles = self._require_calling_aet
        assoc = threading.current_thread()
        if not isinstance(assoc, Association) or not assoc.is_acceptor:
            return titles
        address = assoc.requestor.address
        allowed = [a.ae_title for a in self.allowed_callers if a.allows(address)]
        return allowed or [NOBODY]

    @require_calling_aet.setter
    def require_calling_aet(self, ae_titles: list[str]) -> None:
        AE.require_calling_aet.fset(self, ae_titles)  # type: ignore[attr-defined]


def receiver_user(username: str) -> AbstractBaseUser:
    """The account received instances are recorded as uploaded by.

    Created on first use without a usable password and inactive: it only names the
    uploader, nobody signs in with it.
    """
    model = get_user_model()
    user, created = model.objects.get_or_create(
        username=username, defaults={"is_active": False}
    )
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    return user


@dataclass
class _Session:
    """One association's upload batch."""

    ingester: BatchIngester
    received: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Receiver:
    """Builds the application entity and handles its events; one per listener process."""

    def __init__(
        self,
        *,
        ae_title: str,
        allowed_calling_ae_titles: list[str],
        uploaded_by: AbstractBaseUser,
        transfer_syntaxes: list[str] | None = None,
    ) -> None:
        if not allowed_calling_ae_titles:
            raise ValueError(
                "no calling AE title is allowed: set DICOM_ALLOWED_CALLING_AE_TITLES"
            )
        self.ae_title = ae_title
        self.allowed = list(allowed_calling_ae_titles)
        self.callers = [AllowedCaller.parse(entry) for entry in self.allowed]
        self.uploaded_by = uploaded_by
        self.transfer_syntaxes = transfer_syntaxes or readable_transfer_syntaxes()
        self._sessions: dict[int, _Session] = {}
        self._sessions_lock = threading.Lock()

    def application_entity(self) -> AE:
        # Rejected at association (A-ASSOCIATE-RJ, "calling AE title not recognised"),
        # whether the title is unknown or comes from another address than its own.
        ae = PairedAE(ae_title=self.ae_title, allowed=self.callers)
        ae.require_called_aet = True
        for sop_class in STORAGE_SOP_CLASSES:
            ae.add_supported_context(sop_class, self.transfer_syntaxes)
        ae.add_supported_context(Verification)
        return ae

    def handlers(self) -> list[tuple[Any, Any]]:
        return [
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_REJECTED, self.on_rejected),
            (evt.EVT_RELEASED, self.on_end),
            (evt.EVT_ABORTED, self.on_end),
            (evt.EVT_CONN_CLOSE, self.on_end),
        ]

    def start(
        self, address: tuple[str, int], *, ssl_context: ssl.SSLContext | None = None
    ) -> ThreadedAssociationServer:
        """Listen in background threads; the caller stops it with .shutdown().

        With an SSL context every connection must complete a TLS handshake first.
        """
        server = self.application_entity().start_server(
            address,
            block=False,
            evt_handlers=self.handlers(),
            ssl_context=ssl_context,
        )
        logger.info(
            "DICOM receiver %s listening on %s:%d%s (calling AE titles allowed: %s)",
            self.ae_title,
            address[0],
            address[1],
            " over TLS" if ssl_context is not None else "",
            ", ".join(self.allowed),
        )
        return server

    # --- events ---------------------------------------------------------------------

    def on_echo(self, event: Any) -> int:
        return SUCCESS

    def on_rejected(self, event: Any) -> None:
        requestor = event.assoc.requestor
        logger.warning(
            "refused a DICOM association from AE title %r at %s",
            requestor.ae_title,
            requestor.address,
        )

    def on_store(self, event: Any) -> int | Dataset:
        try:
            session = self._session(event.assoc)
        except transient_errors():
            logger.exception("an association's upload report could not be opened")
            return _status(OUT_OF_RESOURCES, "cannot store now; send it again later")
        if session is None:
            return _status(OUT_OF_RESOURCES, "no model installed; send it again later")
        with session.lock:
            session.received += 1
            name = (
                f"instance {session.received}: {event.request.AffectedSOPInstanceUID}"
            )
            try:
                content = event.encoded_dataset(include_meta=True)
                item = session.ingester.ingest_now(
                    IncomingFile(name=name, file=io.BytesIO(content), size=len(content))
                )
            except transient_errors():
                logger.exception(
                    "upload %s: a received instance could not be stored",
                    session.ingester.batch.pk,
                )
                session.ingester.reject(
                    name,
                    "could not be stored now; the sender was asked to send it "
                    "again (the error is logged for the administrators)",
                    retryable=True,
                )
                return _status(
                    OUT_OF_RESOURCES, "cannot store now; send it again later"
                )
            except Exception:
                logger.exception(
                    "upload %s: a received instance could not be handled",
                    session.ingester.batch.pk,
                )
                session.ingester.reject(
                    name,
                    "internal error while receiving it (logged for administrators)",
                )
                return _status(
                    REFUSED, "internal error; see the portal's upload report"
                )
        if item.outcome == UploadItem.Outcome.REJECTED:
            if item.retryable:
                return _status(OUT_OF_RESOURCES, item.reason)
            return _status(REFUSED, item.reason)
        return SUCCESS

    def on_end(self, event: Any) -> None:
        with self._sessions_lock:
            session = self._sessions.pop(id(event.assoc), None)
        if session is None:
            return
        with session.lock:
            try:
                session.ingester.finish()
            except Exception:
                logger.exception(
                    "upload %s: closing the report failed", session.ingester.batch.pk
                )
            finally:
                # Association threads end here; their database connection goes with them.
                connection.close()

    # --- helpers --------------------------------------------------------------------

    def _session(self, assoc: Any) -> _Session | None:
        key = id(assoc)
        with self._sessions_lock:
            session = self._sessions.get(key)
        if session is not None:
            return session
        try:
            model_version = current_model_version()
        except Exception:
            logger.exception("no model is installed; refusing received instances")
            return None
        batch = UploadBatch.objects.create(
            source=UploadBatch.Source.DICOM,
            created_by=self.uploaded_by,
            calling_ae_title=str(assoc.requestor.ae_title)[:16],
        )
        logger.info(
            "upload %s: association from AE title %r at %s",
            batch.pk,
            assoc.requestor.ae_title,
            assoc.requestor.address,
        )
        session = _Session(
            BatchIngester(
                batch=batch,
                placement=ByDicomTags(created_by=self.uploaded_by),
                uploaded_by=self.uploaded_by,
                model_version=model_version,
            )
        )
        with self._sessions_lock:
            self._sessions[key] = session
        return session


def _status(code: int, reason: str) -> Dataset:
    """A failure status (REFUSED or OUT_OF_RESOURCES) with the reason as its comment."""
    status = Dataset()
    status.Status = code
    # The Error Comment is one LO value: at most 64 characters, no backslash.
    comment = reason.replace("\\", "/")
    if len(comment) > ERROR_COMMENT_LENGTH:
        comment = comment[: ERROR_COMMENT_LENGTH - 3] + "..."
    status.ErrorComment = comment
    return status

"""C-STORE SCU: hand DICOM objects to a PACS in one association, or say why not."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

logger = logging.getLogger(__name__)

# Success, and the warnings a PACS gives for an instance it did store (coerced,
# elements discarded, not matching the SOP class as strictly as it would like).
STORED = {0x0000, 0xB000, 0xB006, 0xB007}


class SendFailed(RuntimeError):
    """The destination did not take every object; str() says which and why."""


def send_datasets(
    datasets: Sequence[Dataset],
    *,
    calling_ae_title: str,
    ae_title: str,
    host: str,
    port: int,
    timeout: float = 30,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Send the datasets in one association; raises SendFailed unless all are stored.

    With an SSL context the association runs over TLS, the PACS's certificate checked
    against the host name.
    """
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for sop_class in dict.fromkeys(str(d.SOPClassUID) for d in datasets):
        ae.add_requested_context(
            sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        )
    tls_args = (ssl_context, host) if ssl_context is not None else None
    assoc = ae.associate(host, port, ae_title=ae_title, tls_args=tls_args)
    if not assoc.is_established:
        state = "rejected" if assoc.is_rejected else "could not be opened"
        raise SendFailed(f"the association with {ae_title} at {host}:{port} {state}")
    try:
        for dataset in datasets:
            status = assoc.send_c_store(dataset)
            code = getattr(status, "Status", None)
            if code not in STORED:
                comment = getattr(status, "ErrorComment", "") if status else ""
                raise SendFailed(
                    f"{ae_title} did not store a {dataset.SOPClassUID.name} object "
                    + (
                        f"(status 0x{code:04X}{': ' + comment if comment else ''})"
                        if code is not None
                        else "(no answer)"
                    )
                )
    except Exception:
        assoc.abort()
        raise
    assoc.release()

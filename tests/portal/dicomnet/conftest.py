"""A DICOM receiver in this test process, on a loopback port of its own."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

RECEIVER_AE = "BUSAI_TEST"
SCANNER_AE = "SCANNER1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def receiver(transactional_db: None) -> Iterator[dict[str, Any]]:
    """A receiver accepting SCANNER1 only; its association threads use the test database."""
    from portal.dicomnet.receiver import Receiver, receiver_user

    receiver = Receiver(
        ae_title=RECEIVER_AE,
        allowed_calling_ae_titles=[SCANNER_AE],
        uploaded_by=receiver_user("dicom-receiver"),
    )
    port = free_port()
    server = receiver.start(("127.0.0.1", port))
    yield {"port": port, "ae_title": RECEIVER_AE, "receiver": receiver}
    server.shutdown()

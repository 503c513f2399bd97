"""Issue 18 finding 10: DICOM TLS for the listener and for sending, and host pairing in the
allow-list.

A certificate authority made here signs the listener's, DCMTK's and a PACS's
certificates. DCMTK's `storescu --enable-tls` is the scanner; DCMTK's `storescp
--enable-tls` the PACS that results are sent to.
"""

from __future__ import annotations

import datetime
import io
import ipaddress
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import UltrasoundImageStorage, Verification

from bench.launch import free_port
from portal.clinical.models import Scan
from portal.dicomnet.sender import SendFailed, send_datasets
from portal.dicomnet.tls import client_context, server_context
from tests.portal.dicomnet.conftest import RECEIVER_AE, SCANNER_AE
from tests.portal.ingest.factories import dicom

pytestmark = pytest.mark.slow

needs_dcmtk = pytest.mark.skipif(
    shutil.which("storescu") is None,
    reason="DCMTK is not installed (apt-get install dcmtk; .ci/run installs it)",
)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(folder: Path, stem: str, key: Any, certificate: x509.Certificate) -> None:
    (folder / f"{stem}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    (folder / f"{stem}.pem").write_bytes(
        certificate.public_bytes(serialization.Encoding.PEM)
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca.pem; listener, scanner and pacs .key/.pem signed by it; rogue ones not."""
    folder = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.UTC)

    def certificate(
        subject: str, key: Any, issuer: x509.Name, signer: Any, *, ca: bool
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(subject))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.BasicConstraints(ca=ca, path_length=None), critical=True
            )
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            ).add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        return builder.sign(signer, hashes.SHA256())

    def new_key() -> Any:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    ca_key = new_key()
    ca = certificate(
        "Test hospital CA", ca_key, _name("Test hospital CA"), ca_key, ca=True
    )
    _write(folder, "ca", ca_key, ca)
    for stem in ("listener", "scanner", "pacs"):
        key = new_key()
        _write(folder, stem, key, certificate(stem, key, ca.subject, ca_key, ca=False))
    rogue_key = new_key()
    rogue = certificate("rogue", rogue_key, _name("rogue"), rogue_key, ca=False)
    _write(folder, "rogue", rogue_key, rogue)
    return folder


@pytest.fixture
def tls_receiver(transactional_db: None, pki: Path) -> Iterator[dict[str, Any]]:
    """The receiver over TLS, requiring a client certificate from the test CA."""
    from portal.dicomnet.receiver import Receiver, receiver_user

    receiver = Receiver(
        ae_title=RECEIVER_AE,
        allowed_calling_ae_titles=[SCANNER_AE],
        uploaded_by=receiver_user("dicom-receiver"),
    )
    port = free_port()
    context = server_context(
        cert_file=str(pki / "listener.pem"),
        key_file=str(pki / "listener.key"),
        ca_file=str(pki / "ca.pem"),
    )
    server = receiver.start(("127.0.0.1", port), ssl_context=context)
    yield {"port": port}
    server.shutdown()


def tls(pki: Path, *, cert: str = "scanner", trust: str = "ca") -> tuple[str, ...]:
    """storescu's TLS options: present `cert`'s key and certificate, trust `trust`."""
    return (
        "--enable-tls",
        str(pki / f"{cert}.key"),
        str(pki / f"{cert}.pem"),
        "--add-cert-file",
        str(pki / f"{trust}.pem"),
    )


def storescu(port: int, path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["storescu", "-v", *options, "-aet", SCANNER_AE, "-aec", RECEIVER_AE]
        + ["127.0.0.1", str(port), str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


@needs_dcmtk
def test_storescu_over_tls_stores_and_plain_or_unknown_certificates_are_refused(
    tls_receiver: dict[str, Any], pki: Path, tmp_path: Path, enqueued: list
) -> None:
    path = tmp_path / "scan.dcm"
    path.write_bytes(dicom(study_uid=generate_uid()))
    port = tls_receiver["port"]

    secure = storescu(port, path, *tls(pki))
    assert secure.returncode == 0, secure.stderr
    assert "Received Store Response (Success)" in secure.stdout + secure.stderr
    assert Scan.objects.count() == 1
    assert len(enqueued) == 1

    plain = storescu(port, path)
    assert plain.returncode != 0
    rogue = storescu(port, path, *tls(pki, cert="rogue"))
    assert rogue.returncode != 0
    # storescu checks the listener too: a CA it does not trust fails the handshake.
    untrusted = storescu(port, path, *tls(pki, trust="rogue"))
    assert untrusted.returncode != 0
    assert Scan.objects.count() == 1


@pytest.fixture
def tls_pacs(pki: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """DCMTK's storescp over TLS, requiring our client certificate."""
    if shutil.which("storescp") is None:
        pytest.skip("DCMTK is not installed (apt-get install dcmtk)")
    folder = tmp_path / "pacs"
    folder.mkdir()
    port = free_port()
    process = subprocess.Popen(
        [
            "storescp",
            "--enable-tls",
            str(pki / "pacs.key"),
            str(pki / "pacs.pem"),
            "--add-cert-file",
            str(pki / "ca.pem"),
            "--require-peer-cert",
            "-aet",
            "PACS_TLS",
            "-od",
            str(folder),
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    assert process.poll() is None, "storescp did not start"
    yield {"port": port, "folder": folder}
    process.terminate()
    process.wait(timeout=10)


def test_results_are_sent_to_a_tls_pacs_and_its_certificate_is_checked(
    tls_pacs: dict[str, Any], pki: Path
) -> None:
    dataset = pydicom.dcmread(io.BytesIO(dicom(study_uid=generate_uid())))
    ours = {"cert_file": str(pki / "scanner.pem"), "key_file": str(pki / "scanner.key")}
    send_datasets(
        [dataset],
        calling_ae_title="BUSAI",
        ae_title="PACS_TLS",
        host="127.0.0.1",
        port=tls_pacs["port"],
        ssl_context=client_context(ca_file=str(pki / "ca.pem"), **ours),
    )
    deadline = time.monotonic() + 10
    while not list(tls_pacs["folder"].iterdir()):
        assert time.monotonic() < deadline, "the PACS stored nothing"
        time.sleep(0.1)
    # A PACS whose certificate does not chain to the configured CA is not sent to.
    with pytest.raises(SendFailed, match="could not be opened"):
        send_datasets(
            [dataset],
            calling_ae_title="BUSAI",
            ae_title="PACS_TLS",
            host="127.0.0.1",
            port=tls_pacs["port"],
            ssl_context=client_context(ca_file=str(pki / "rogue.pem"), **ours),
            timeout=10,
        )


@pytest.fixture
def paired_receiver(transactional_db: None) -> Iterator[dict[str, Any]]:
    """SCANNER1 allowed from 127.0.0.2 only; PACS_MAIN from anywhere."""
    from portal.dicomnet.receiver import Receiver, receiver_user

    receiver = Receiver(
        ae_title=RECEIVER_AE,
        allowed_calling_ae_titles=[f"{SCANNER_AE}@127.0.0.2", "PACS_MAIN"],
        uploaded_by=receiver_user("dicom-receiver"),
    )
    port = free_port()
    server = receiver.start(("127.0.0.1", port))
    yield {"port": port}
    server.shutdown()


def _associate(port: int, calling: str, source: str) -> Any:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.add_requested_context(UltrasoundImageStorage)
    return ae.associate(
        "127.0.0.1", port, ae_title=RECEIVER_AE, bind_address=(source, 0)
    )


def test_a_title_paired_with_a_host_is_accepted_only_from_that_host(
    paired_receiver: dict[str, Any],
) -> None:
    port = paired_receiver["port"]
    elsewhere = _associate(port, SCANNER_AE, "127.0.0.1")
    assert elsewhere.is_rejected
    paired = _associate(port, SCANNER_AE, "127.0.0.2")
    assert paired.is_established
    assert paired.send_c_echo().Status == 0x0000
    paired.release()
    anywhere = _associate(port, "PACS_MAIN", "127.0.0.1")
    assert anywhere.is_established
    anywhere.release()


def test_allow_list_entries_are_validated() -> None:
    from django.core.exceptions import ImproperlyConfigured

    from portal.settings import _allowed_calling_entry

    assert _allowed_calling_entry("X", "US_ROOM1@10.1.2.3") == "US_ROOM1@10.1.2.3/32"
    assert _allowed_calling_entry("X", "US_ROOM1@10.1.2.9/24") == "US_ROOM1@10.1.2.0/24"
    assert _allowed_calling_entry("X", "PACS") == "PACS"
    with pytest.raises(ImproperlyConfigured, match="not an IP address or network"):
        _allowed_calling_entry("X", "US_ROOM1@scanner.example.org")


@needs_dcmtk
@pytest.mark.django_db(transaction=True)
def test_the_deployed_listener_speaks_tls_from_its_settings(
    pki: Path, media_root: Path, weights_dir: Path, tmp_path: Path
) -> None:
    """`manage.py dicom_listener` configured by DICOM_TLS_* only, as deployed; DCMTK's
    storescu --enable-tls is the scanner."""
    import uuid

    from django.db import connection

    from bench.launch import start_listener, stop_process
    from tests.portal.dicomnet.conftest import listener_env, redis_or_skip

    client, url = redis_or_skip(14)
    queue = f"inference-tls-{uuid.uuid4().hex[:12]}"
    port = free_port()
    env = listener_env(
        port=port,
        redis_url=url,
        queue=queue,
        media_root=media_root,
        weights_dir=weights_dir,
        ae_title=RECEIVER_AE,
        allowed=f"{SCANNER_AE}@127.0.0.1",
        DICOM_TLS_CERT_FILE=str(pki / "listener.pem"),
        DICOM_TLS_KEY_FILE=str(pki / "listener.key"),
        DICOM_TLS_CA_FILE=str(pki / "ca.pem"),
    )
    log = tmp_path / "listener.log"
    process = start_listener(env, log)
    try:
        assert "over TLS" in log.read_text()
        path = tmp_path / "scan.dcm"
        path.write_bytes(dicom(study_uid=generate_uid()))
        secure = storescu(port, path, *tls(pki))
        assert secure.returncode == 0, secure.stderr
        assert "Received Store Response (Success)" in secure.stdout + secure.stderr
        assert storescu(port, path).returncode != 0  # no TLS: refused
        assert Scan.objects.count() == 1
        assert client.llen(queue) == 1
    finally:
        stop_process(process)
        client.delete(queue)
        client.close()
        connection.close()

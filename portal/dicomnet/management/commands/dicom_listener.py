"""Run the DICOM receiver (C-STORE SCP) until SIGTERM or Ctrl-C."""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from portal.analyses.modelinfo import ModelVersionUnavailable, current_model_version
from portal.dicomnet.receiver import Receiver, receiver_user
from portal.dicomnet.tls import listener_context


class Command(BaseCommand):
    help = (
        "Receive ultrasound and secondary capture images over DICOM (C-STORE, C-ECHO) "
        "from the calling AE titles in DICOM_ALLOWED_CALLING_AE_TITLES, ingest them "
        "like uploads and queue their analyses."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--port", type=int, help=f"default DICOM_PORT ({settings.DICOM_PORT})"
        )
        parser.add_argument(
            "--bind",
            help=f"address to listen on, default DICOM_BIND_ADDRESS "
            f"({settings.DICOM_BIND_ADDRESS})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DICOM_ALLOWED_CALLING_AE_TITLES:
            raise CommandError(
                "DICOM_ALLOWED_CALLING_AE_TITLES is empty: name the AE titles of the "
                "scanners and PACS that may send (comma-separated)"
            )
        try:
            current_model_version()
        except ModelVersionUnavailable as exc:
            raise CommandError(f"cannot receive: {exc}") from None
        receiver = Receiver(
            ae_title=settings.DICOM_AE_TITLE,
            allowed_calling_ae_titles=settings.DICOM_ALLOWED_CALLING_AE_TITLES,
            uploaded_by=receiver_user(settings.DICOM_RECEIVER_USERNAME),
        )
        address = (
            options["bind"] or settings.DICOM_BIND_ADDRESS,
            options["port"] or settings.DICOM_PORT,
        )
        try:
            context = listener_context()
        except (ImproperlyConfigured, OSError) as exc:
            raise CommandError(f"DICOM TLS: {exc}") from None
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        try:
            server = receiver.start(address, ssl_context=context)
        except OSError as exc:
            raise CommandError(
                f"cannot listen on {address[0]}:{address[1]}: {exc}"
            ) from None
        self.stdout.write(
            f"DICOM receiver {settings.DICOM_AE_TITLE} listening on "
            f"{address[0]}:{address[1]}" + (" over TLS" if context else ""),
        )
        self.stdout.flush()
        try:
            stop.wait()
        finally:
            # Lets associations in progress finish their current instance.
            server.shutdown()
        self.stdout.write("DICOM receiver stopped")

from __future__ import annotations

from django.apps import AppConfig


class DicomNetConfig(AppConfig):
    name = "portal.dicomnet"
    label = "dicomnet"
    verbose_name = "DICOM networking"

    def ready(self) -> None:
        from portal.dicomnet.receivers import send_signed_reading
        from portal.review.signals import reading_signed

        reading_signed.connect(
            send_signed_reading, dispatch_uid="dicomnet.send_signed_reading"
        )

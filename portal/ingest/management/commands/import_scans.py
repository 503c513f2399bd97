"""Import a folder tree of scans (images, DICOM files, zips) with a progress bar.

Safe to run again: an image already in the portal (same SHA-256) is reported as a
duplicate and linked to its scan, never imported or analysed twice; patients and studies
are matched before any is created.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from portal.analyses.modelinfo import ModelVersionUnavailable, current_model_version
from portal.clinical.models import Study
from portal.ingest.models import UploadBatch, UploadItem
from portal.ingest.placement import ByTagsAndFolders, IntoStudy, Placement
from portal.ingest.services import BatchIngester, IncomingFile

Outcome = UploadItem.Outcome


def files_under(root: Path) -> list[Path]:
    """Every file under root (or root itself), sorted; links are listed, not followed."""
    if not root.is_dir():
        return [root]
    found = []
    for folder, dirs, names in os.walk(root, followlinks=False):
        dirs.sort()
        found.extend(Path(folder) / name for name in sorted(names))
    return found


class Command(BaseCommand):
    help = (
        "Import a folder of scans (PNG, JPEG, BMP, TIFF, DICOM, zips of them) into one "
        "study (--study ID), or place each file by its DICOM tags or by folders named "
        "PATIENT/STUDY/ (--by-folder). Prints accepted, duplicate and rejected files."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", help="a folder (walked recursively) or one file")
        where = parser.add_mutually_exclusive_group(required=True)
        where.add_argument("--study", type=int, help="id of the study to import into")
        where.add_argument(
            "--by-folder",
            action="store_true",
            help="DICOM files by their patient ID and study instance UID / accession; "
            "other images by folders PATIENT_IDENTIFIER/STUDY_ACCESSION/file; patients "
            "and studies are matched or created",
        )
        parser.add_argument(
            "--user",
            help="username recorded as uploader (default: the first superuser)",
        )
        parser.add_argument(
            "--no-progress", action="store_true", help="no progress bar"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        root = Path(options["path"]).expanduser()
        if not root.exists():
            raise CommandError(f"{root} does not exist")
        user = self._user(options["user"])
        try:
            model_version = current_model_version()
        except ModelVersionUnavailable as exc:
            raise CommandError(f"cannot import: {exc}") from None
        study: Study | None = None
        placement: Placement
        if options["study"] is not None:
            study = (
                Study.objects.select_related("patient")
                .filter(pk=options["study"])
                .first()
            )
            if study is None:
                raise CommandError(f"no study with id {options['study']}")
            placement = IntoStudy(study)
        else:
            placement = ByTagsAndFolders(created_by=user)

        paths = files_under(root)
        base = root if root.is_dir() else root.parent
        batch = UploadBatch.objects.create(
            study=study, source=UploadBatch.Source.IMPORT, created_by=user
        )
        ingester = BatchIngester(
            batch=batch,
            placement=placement,
            uploaded_by=user,
            model_version=model_version,
        )
        progress = tqdm(
            total=len(paths),
            unit="file",
            desc="importing",
            file=sys.stderr,
            disable=True if options["no_progress"] else None,
        )
        try:
            with progress:
                for incoming in self._incoming(paths, base, ingester):
                    ingester.ingest(incoming)
                    progress.update(1)
            result = ingester.finish()
        finally:
            ingester.close()
        self._summary(result.items, batch, int(options["verbosity"]))

    def _user(self, username: str | None) -> Any:
        users = get_user_model().objects.filter(is_active=True)
        if username:
            user = users.filter(username=username).first()
            if user is None:
                raise CommandError(f"no active user called {username!r}")
            return user
        user = users.filter(is_superuser=True).order_by("pk").first()
        if user is None:
            raise CommandError(
                "give --user USERNAME: every scan records who uploaded it"
            )
        return user

    def _incoming(
        self, paths: list[Path], base: Path, ingester: BatchIngester
    ) -> Iterator[IncomingFile]:
        """Open one file at a time; it is closed as soon as it has been ingested."""
        for path in paths:
            relative = path.relative_to(base)
            name = relative.as_posix()
            if path.is_symlink():
                ingester.reject(name, "symbolic link; links are not followed")
                continue
            if not path.is_file():
                ingester.reject(name, "not a regular file")
                continue
            try:
                handle = path.open("rb")
            except OSError as exc:
                ingester.reject(name, f"cannot be read: {exc.strerror or exc}")
                continue
            with handle:
                yield IncomingFile(
                    name=name,
                    file=handle,
                    size=path.stat().st_size,
                    folders=relative.parts[:-1],
                )

    def _summary(
        self, items: list[UploadItem], batch: UploadBatch, verbosity: int
    ) -> None:
        by_outcome: dict[str, list[UploadItem]] = {o: [] for o in Outcome.values}
        for item in items:
            by_outcome[item.outcome].append(item)
        if verbosity >= 2:
            for item in by_outcome[Outcome.ACCEPTED]:
                self.stdout.write(
                    f"accepted   {self._name(item)} -> scan {item.scan_id}"
                )
            for item in by_outcome[Outcome.DUPLICATE]:
                self.stdout.write(f"duplicate  {self._name(item)}: {item.reason}")
        for item in by_outcome[Outcome.REJECTED]:
            self.stdout.write(f"rejected   {self._name(item)}: {item.reason}")
        self.stdout.write(
            f"upload {batch.pk}: {len(by_outcome[Outcome.ACCEPTED])} accepted, "
            f"{len(by_outcome[Outcome.DUPLICATE])} duplicates (already imported), "
            f"{len(by_outcome[Outcome.REJECTED])} rejected"
        )

    @staticmethod
    def _name(item: UploadItem) -> str:
        return f"{item.archive}/{item.filename}" if item.archive else item.filename

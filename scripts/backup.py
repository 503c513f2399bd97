#!/usr/bin/env python3
"""Back up and restore the portal: its database and its stored files (`make backup`,
`make restore`).

    python scripts/backup.py backup --to DIR     # DIR must not exist yet
    python scripts/backup.py restore --from DIR  # into an empty database and storage

Both read the same settings as the portal (DATABASE_URL, STORAGE_BACKEND, MEDIA_ROOT or
the AWS_* variables), so the storage is whatever the portal uses: a local folder or S3.

A backup folder holds:

- `database.dump`: PostgreSQL's pg_dump in its custom format (one consistent snapshot,
  taken while the portal keeps running), or `database.sqlite3` for a SQLite database;
- `media/`: every stored file under its storage name (originals, display copies,
  analysis artifacts);
- `manifest.json`: what was backed up and the SHA-256 and size of every file.

The database is dumped first and the files copied after: a row in the dump names a file
that was stored before the row was committed, so every file the dump refers to is in the
backup (files stored later are copied too and are harmless). The restore checks every
checksum of the backup before it writes anything, refuses a database or storage that
already holds other data, writes the files back under their own names, reads each one
back to check it, and finally checks that every file the restored rows name is there.
Nothing here prints a file's content or a row: only names made of ids and counts.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
MANIFEST = "manifest.json"
FORMAT = 1
CHUNK = 1 << 20

logger = logging.getLogger("backup")


class BackupError(RuntimeError):
    """The backup or restore cannot go on; str() says why."""


def setup_django() -> None:
    sys.path.insert(0, str(REPO_ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    import django

    django.setup()


# --- the database -----------------------------------------------------------------


def _pg_command(program: str, db: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """The connection arguments of pg_dump/pg_restore, the password in the environment."""
    if shutil.which(program) is None:
        raise BackupError(
            f"{program} is not installed (Debian: apt-get install postgresql-client)"
        )
    command = [program, "--no-password"]
    if db.get("HOST"):
        command += ["--host", str(db["HOST"])]
    if db.get("PORT"):
        command += ["--port", str(db["PORT"])]
    if db.get("USER"):
        command += ["--username", str(db["USER"])]
    env = dict(os.environ)
    if db.get("PASSWORD"):
        env["PGPASSWORD"] = str(db["PASSWORD"])
    return command, env


def _run(command: list[str], env: dict[str, str], what: str) -> None:
    result = subprocess.run(
        command, check=False, env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise BackupError(
            f"{what} failed ({result.returncode}): {result.stderr.strip()}"
        )


def dump_database(target: Path) -> str:
    from django.db import connection

    db = connection.settings_dict
    if connection.vendor == "postgresql":
        path = target / "database.dump"
        command, env = _pg_command("pg_dump", db)
        # --format=custom: compressed, restored table by table by pg_restore. pg_dump
        # reads one snapshot, so rows written meanwhile are either all in or all out.
        command += [
            "--format=custom",
            "--no-owner",
            "--no-privileges",
            "--file",
            str(path),
            str(db["NAME"]),
        ]
        _run(command, env, "pg_dump")
        return path.name
    if connection.vendor == "sqlite":
        path = target / "database.sqlite3"
        source = sqlite3.connect(str(db["NAME"]))
        copy = sqlite3.connect(str(path))
        try:
            source.backup(copy)  # SQLite's online backup: a consistent copy
        finally:
            copy.close()
            source.close()
        return path.name
    raise BackupError(f"cannot back up a {connection.vendor} database")


def database_is_empty() -> bool:
    from django.db import connection

    return not connection.introspection.table_names()


def restore_database(source: Path, name: str) -> None:
    from django.db import connection

    db = connection.settings_dict
    if not database_is_empty():
        raise BackupError(
            f"the database {db['NAME']} already has tables: restore into a new, empty "
            "database (createdb), never over a running portal's"
        )
    if connection.vendor == "postgresql":
        if name != "database.dump":
            raise BackupError(f"this backup holds {name}, not a PostgreSQL dump")
        connection.close()
        command, env = _pg_command("pg_restore", db)
        command += [
            "--exit-on-error",
            "--no-owner",
            "--no-privileges",
            "--single-transaction",
            "--dbname",
            str(db["NAME"]),
            str(source / name),
        ]
        _run(command, env, "pg_restore")
        return
    if connection.vendor == "sqlite":
        if name != "database.sqlite3":
            raise BackupError(f"this backup holds {name}, not a SQLite database")
        connection.close()
        backup = sqlite3.connect(str(source / name))
        target = sqlite3.connect(str(db["NAME"]))
        try:
            backup.backup(target)
        finally:
            target.close()
            backup.close()
        return
    raise BackupError(f"cannot restore into a {connection.vendor} database")


# --- the stored files ---------------------------------------------------------------


def stored_names(storage: Any, folder: str = "") -> Iterator[str]:
    """Every file in the storage, by its storage name (local folder or S3 alike)."""
    try:
        folders, files = storage.listdir(folder)
    except FileNotFoundError:  # a local storage folder not made yet: empty
        return
    for name in sorted(files):
        yield f"{folder}/{name}" if folder else name
    for sub in sorted(folders):
        yield from stored_names(storage, f"{folder}/{sub}" if folder else sub)


def safe_relative(name: str) -> PurePosixPath:
    """A storage name as a path inside the backup; refuses anything that leaves it."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise BackupError(f"refusing the storage name {name!r}")
    return path


def _copy_out(handle: Any, path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("wb") as out:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    return digest.hexdigest(), size


def _sha256(handle: Any) -> str:
    digest = hashlib.sha256()
    while chunk := handle.read(CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return _sha256(handle)


def stored_sha256(storage: Any, name: str) -> str:
    with storage.open(name, "rb") as handle:
        return _sha256(handle)


def referenced_files() -> dict[str, set[str]]:
    """Storage names the database's file fields refer to, per model label."""
    from django.apps import apps
    from django.db import models

    names: dict[str, set[str]] = {}
    for model in apps.get_models():
        fields = [f.name for f in model._meta.fields if isinstance(f, models.FileField)]
        for field in fields:
            values = (
                model._default_manager.exclude(**{field: ""})
                .exclude(**{f"{field}__isnull": True})
                .values_list(field, flat=True)
            )
            names.setdefault(model._meta.label, set()).update(values)
    return names


def row_counts() -> dict[str, int]:
    from django.apps import apps

    return {
        model._meta.label: model._default_manager.count()
        for model in apps.get_models()
        if model._meta.managed
    }


# --- the two commands -------------------------------------------------------------


def backup(target: Path) -> dict[str, Any]:
    from django.conf import settings
    from django.core.files.storage import default_storage

    if target.exists() and any(target.iterdir()):
        raise BackupError(
            f"{target} exists and is not empty: back up into a new folder"
        )
    target.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.UTC)
    database = dump_database(target)
    media = target / "media"
    media.mkdir()
    files: dict[str, dict[str, Any]] = {}
    for name in stored_names(default_storage):
        path = media / safe_relative(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with default_storage.open(name, "rb") as handle:
            sha256, size = _copy_out(handle, path)
        files[name] = {"sha256": sha256, "size": size}
    manifest = {
        "format": FORMAT,
        "started_at": started.isoformat(),
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(),
        "storage_backend": settings.STORAGE_BACKEND,
        "database": {
            "file": database,
            "sha256": file_sha256(target / database),
        },
        "files": files,
    }
    (target / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return {"database": database, "files": len(files)}


def verify_backup(source: Path) -> dict[str, Any]:
    """The manifest, once every file of the backup matches its checksum."""
    try:
        manifest = json.loads((source / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupError(f"{source} has no {MANIFEST}: not a backup folder") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"unknown backup format {manifest.get('format')!r}")
    database = manifest["database"]
    if file_sha256(source / database["file"]) != database["sha256"]:
        raise BackupError(f"{database['file']} does not match its checksum")
    bad = [
        name
        for name, entry in manifest["files"].items()
        if not (source / "media" / safe_relative(name)).is_file()
        or file_sha256(source / "media" / safe_relative(name)) != entry["sha256"]
    ]
    if bad:
        raise BackupError(
            f"{len(bad)} file(s) of the backup are missing or do not match their "
            f"checksum, the first: {bad[0]}"
        )
    return manifest


def restore(source: Path) -> dict[str, Any]:
    from django.core.files import File
    from django.core.files.storage import default_storage

    manifest = verify_backup(source)
    existing = next(iter(stored_names(default_storage)), None)
    if existing is not None:
        raise BackupError(
            "the storage already holds files: restore into a new, empty storage "
            "(folder or bucket)"
        )
    restore_database(source, manifest["database"]["file"])
    for name, entry in manifest["files"].items():
        with (source / "media" / safe_relative(name)).open("rb") as handle:
            saved = default_storage.save(name, File(handle, name=name))
        if saved != name:
            raise BackupError(f"the storage renamed {name} to {saved}")
        if stored_sha256(default_storage, name) != entry["sha256"]:
            raise BackupError(f"{name} reads back different from the backup")
    missing = sorted(
        f"{label}: {name}"
        for label, names in referenced_files().items()
        for name in names
        if name not in manifest["files"]
    )
    if missing:
        raise BackupError(
            f"{len(missing)} file(s) named by the restored rows are not in the "
            f"backup, the first: {missing[0]}"
        )
    return {
        "database": manifest["database"]["file"],
        "files": len(manifest["files"]),
        "rows": row_counts(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("backup", help="back up into a new folder").add_argument(
        "--to", type=Path, required=True, dest="folder"
    )
    commands.add_parser("restore", help="restore a backup folder").add_argument(
        "--from", type=Path, required=True, dest="folder"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    setup_django()
    try:
        if args.command == "backup":
            summary = backup(args.folder)
        else:
            summary = restore(args.folder)
    except BackupError as exc:
        logger.error("%s failed: %s", args.command, exc)
        return 1
    sys.stdout.write(json.dumps({args.command: summary}, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

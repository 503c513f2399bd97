"""The restore drill (issue 18): back up while the portal is in use, restore into a fresh
PostgreSQL database and a fresh storage, and find every row and every file again.

`scripts/backup.py` runs as `make backup` / `make restore` run it: in processes of its
own, configured by the environment (DATABASE_URL, MEDIA_ROOT). While the backup runs, a
thread keeps uploading scans and writing access records, as a portal in use does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.db import connection

from bench.launch import database_url
from tests.conftest import TEST_MODEL_VERSION
from tests.portal.conftest import run_python
from tests.portal.dicomnet.conftest import finish_analysis
from tests.portal.ingest.factories import dicom, png

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
logger = logging.getLogger(__name__)

TABLES = (
    "auth_user",
    "clinical_patient",
    "clinical_study",
    "clinical_scan",
    "analyses_analysis",
    "review_review",
    "audit_accessrecord",
    "auditlog_logentry",
    "ingest_uploadbatch",
    "ingest_uploaditem",
)
# (table, file columns) whose files must come back byte for byte.
FILE_COLUMNS = {
    "clinical_scan": ("original", "display"),
    "analyses_analysis": ("mask", "overlay", "gradcam", "seg_gradcam"),
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rows(url: str, table: str) -> dict[Any, tuple]:
    with psycopg.connect(url) as db, db.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {table}")
        columns = [c.name for c in cursor.description]
        key = columns.index("id")
        return {row[key]: row for row in cursor.fetchall()}


def column_values(url: str, table: str, column: str) -> list[str]:
    with psycopg.connect(url) as db, db.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM {table} WHERE {column} <> ''")
        return [value for (value,) in cursor.fetchall()]


def backup(to: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`scripts/backup.py backup --to` in a process of its own, as `make backup` runs it."""
    return run_python(
        "scripts/backup.py", "backup", "--to", str(to), env=env, timeout=300
    )


def restore(source: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`scripts/backup.py restore --from`, as `make restore` runs it."""
    return run_python(
        "scripts/backup.py", "restore", "--from", str(source), env=env, timeout=300
    )


def portal_env(url: str, media: Path) -> dict[str, str]:
    return {
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "DATABASE_URL": url,
        "STORAGE_BACKEND": "local",
        "MEDIA_ROOT": str(media),
        "SECRET_KEY": settings.SECRET_KEY,
    }


@pytest.fixture
def fresh_database() -> Any:
    """An empty PostgreSQL database beside the test database, dropped afterwards."""
    if connection.vendor != "postgresql":
        pytest.skip(
            "the restore drill needs PostgreSQL (pg_dump/pg_restore): set DATABASE_URL"
        )
    name = f"restore_drill_{uuid.uuid4().hex[:10]}"
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    settings_dict = {**connection.settings_dict, "NAME": name}
    yield database_url(settings_dict)
    with connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def in_use(study: Any, user: Any, stop: threading.Event, made: list[int]) -> None:
    """Uploads and page reads, one after another, until told to stop."""
    from django.contrib.contenttypes.models import ContentType

    from portal.audit.models import AccessRecord
    from portal.ingest.services import upload_to_study

    try:
        value = 0
        while not stop.is_set():
            value += 1
            file = _upload(f"live-{value}.png", png(value=(value * 7) % 250 + 1))
            result = upload_to_study(
                study=study,
                files=[file],
                uploaded_by=user,
                source="web",
                model_version=TEST_MODEL_VERSION,
            )
            made.extend(i.scan_id for i in result.items if i.scan_id)
            AccessRecord.objects.create(
                user=user,
                username=user.get_username(),
                action=AccessRecord.Action.VIEW,
                content_type=ContentType.objects.get_for_model(study),
                object_id=str(study.pk),
                path=f"/studies/{study.pk}/",
            )
    finally:
        connection.close()


def _upload(name: str, content: bytes) -> Any:
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, content)


def test_backup_mid_use_and_restore_into_a_fresh_database_and_storage(
    study: Any,
    user: Any,
    make_user: Any,
    media_root: Path,
    tmp_path: Path,
    fresh_database: str,
) -> None:
    from portal.ingest.services import upload_to_study
    from portal.review.services import review_save

    # A portal with history: PNG and DICOM scans, finished analyses with their
    # artifacts, a signed reading and an amendment draft, access records.
    result = upload_to_study(
        study=study,
        files=[
            _upload("a.png", png(value=11)),
            _upload("b.png", png(value=12)),
            _upload("c.dcm", dicom(patient_id="H-0001")),
        ],
        uploaded_by=user,
        source="web",
        model_version=TEST_MODEL_VERSION,
    )
    scans = [item.scan for item in result.items]
    analyses = [finish_analysis(scan) for scan in scans]
    reader = make_user("radiologist", "dr-drill")
    review_save(
        analysis=analyses[0],
        author=reader,
        agrees_with_model=True,
        label=analyses[0].label,
        birads="4A",
        sign=True,
    )
    review_save(
        analysis=analyses[1],
        author=reader,
        agrees_with_model=False,
        label="benign",
        birads="2",
    )
    source_url = database_url(connection.settings_dict)
    before = {table: set(rows(source_url, table)) for table in TABLES}
    assert all(
        before[t] for t in ("clinical_scan", "review_review", "auditlog_logentry")
    )

    stop, made = threading.Event(), []
    writer = threading.Thread(target=in_use, args=(study, user, stop, made))
    writer.start()
    try:
        backup_dir = tmp_path / "backup"
        backed_up = backup(backup_dir, portal_env(source_url, media_root))
    finally:
        stop.set()
        writer.join(timeout=120)
    assert backed_up.returncode == 0, backed_up.stderr
    assert made, "nothing was uploaded while the backup ran"

    restored_media = tmp_path / "restored-media"
    restored_media.mkdir()
    restored = restore(backup_dir, portal_env(fresh_database, restored_media))
    assert restored.returncode == 0, restored.stderr
    summary = json.loads(restored.stdout)["restore"]

    # Every row that existed before the backup began is back, equal to its source.
    # Rows the portal wrote while the backup ran are back as the dump's snapshot saw
    # them (a report row of an upload in progress, say, not finished yet): they must
    # exist in the source, nothing may appear from nowhere.
    totals = {"rows": 0, "files": 0}
    for table in TABLES:
        source_rows, back = rows(source_url, table), rows(fresh_database, table)
        assert before[table] <= set(back), f"{table}: rows missing after restore"
        assert set(back) <= set(source_rows), f"{table}: rows that never existed"
        for key in before[table]:
            assert source_rows[key] == back[key], f"{table} row {key} differs"
        totals["rows"] += len(back)
    # Consistent: every restored scan has its analysis (foreign keys are checked by
    # PostgreSQL as pg_restore adds them).
    with psycopg.connect(fresh_database) as db, db.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM clinical_scan s WHERE NOT EXISTS "
            "(SELECT 1 FROM analyses_analysis a WHERE a.scan_id = s.id)"
        )
        assert cursor.fetchone() == (0,)

    # Every file a restored row names is back, byte for byte.
    for table, columns in FILE_COLUMNS.items():
        for column in columns:
            for name in column_values(fresh_database, table, column):
                assert (restored_media / name).is_file(), f"{name} not restored"
                assert sha256(restored_media / name) == sha256(media_root / name)
                totals["files"] += 1
    for pk, name, digest in _scan_digests(fresh_database):
        assert sha256(restored_media / name) == digest, f"scan {pk}"
    manifest = json.loads((backup_dir / "manifest.json").read_text())
    assert summary["files"] == len(manifest["files"])
    for name, entry in manifest["files"].items():
        assert sha256(restored_media / name) == entry["sha256"]
    assert totals["files"] >= 2 * len(before["clinical_scan"])
    logger.info(
        "restore drill: %d rows and %d files back, all equal (%d written during the "
        "backup)",
        totals["rows"],
        totals["files"],
        len(made),
    )


def _scan_digests(url: str) -> list[tuple[int, str, str]]:
    with psycopg.connect(url) as db, db.cursor() as cursor:
        cursor.execute("SELECT id, original, sha256 FROM clinical_scan")
        return cursor.fetchall()


def test_restore_refuses_a_database_that_is_in_use(
    study: Any, media_root: Path, tmp_path: Path, fresh_database: str
) -> None:
    source_url = database_url(connection.settings_dict)
    backup_dir = tmp_path / "backup"
    assert backup(backup_dir, portal_env(source_url, media_root)).returncode == 0
    # Over the running portal's own database: refused before anything is written.
    refused = restore(backup_dir, portal_env(source_url, tmp_path / "empty-media"))
    assert refused.returncode == 1
    assert "already has tables" in refused.stderr
    # A backup whose dump was altered is refused before the database is touched.
    dump = backup_dir / "database.dump"
    content = bytearray(dump.read_bytes())
    content[len(content) // 2] ^= 0xFF
    dump.write_bytes(bytes(content))
    tampered = restore(
        backup_dir, portal_env(fresh_database, tmp_path / "empty-media-2")
    )
    assert tampered.returncode == 1
    assert "does not match its checksum" in tampered.stderr
    with psycopg.connect(fresh_database) as db, db.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM information_schema.tables "
            "WHERE table_schema = 'public'"
        )
        assert cursor.fetchone() == (0,)


def test_backup_and_restore_with_s3_storage(
    study: Any,
    user: Any,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    fresh_database: str,
) -> None:
    """The same commands with STORAGE_BACKEND=s3 (moto's S3 server): files come from one
    bucket and go back into a new one, byte for byte."""
    import boto3

    from portal.ingest.services import upload_to_study
    from portal.settings import s3_storage

    moto_server = pytest.importorskip("moto.server")
    from bench.launch import free_port

    credentials = {
        "AWS_ACCESS_KEY_ID": "drill-key",
        "AWS_SECRET_ACCESS_KEY": "drill-secret",
        "AWS_S3_REGION_NAME": "eu-west-1",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }
    for name, value in credentials.items():
        monkeypatch.setenv(name, value)
    port = free_port()
    server = moto_server.ThreadedMotoServer(
        ip_address="127.0.0.1", port=port, verbose=False
    )
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name="eu-west-1")
        for bucket in ("drill-source", "drill-restored"):
            client.create_bucket(
                Bucket=bucket,
                CreateBucketConfiguration={"LocationConstraint": "eu-west-1"},
            )
        settings.STORAGES = {
            **settings.STORAGES,
            "default": s3_storage(
                bucket="drill-source",
                region="eu-west-1",
                endpoint_url=endpoint,
                addressing_style="path",
            ),
        }
        result = upload_to_study(
            study=study,
            files=[_upload("a.png", png(value=21)), _upload("b.dcm", dicom())],
            uploaded_by=user,
            source="web",
            model_version=TEST_MODEL_VERSION,
        )
        for item in result.items:
            finish_analysis(item.scan)

        def env(url: str, bucket: str) -> dict[str, str]:
            return {
                **portal_env(url, tmp_path / "unused"),
                **credentials,
                "STORAGE_BACKEND": "s3",
                "AWS_STORAGE_BUCKET_NAME": bucket,
                "AWS_S3_ENDPOINT_URL": endpoint,
                "AWS_S3_ADDRESSING_STYLE": "path",
            }

        source_url = database_url(connection.settings_dict)
        backup_dir = tmp_path / "backup"
        backed_up = backup(backup_dir, env(source_url, "drill-source"))
        assert backed_up.returncode == 0, backed_up.stderr
        restored = restore(backup_dir, env(fresh_database, "drill-restored"))
        assert restored.returncode == 0, restored.stderr

        def digest(bucket: str, key: str) -> str:
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            return hashlib.sha256(body).hexdigest()

        names = [
            name
            for table, columns in FILE_COLUMNS.items()
            for column in columns
            for name in column_values(fresh_database, table, column)
        ]
        assert len(names) >= 2 * 3  # each scan's original and display, each mask
        for name in names:
            assert digest("drill-restored", name) == digest("drill-source", name)
        source_keys = {
            o["Key"]
            for o in client.list_objects_v2(Bucket="drill-source").get("Contents", [])
        }
        restored_keys = {
            o["Key"]
            for o in client.list_objects_v2(Bucket="drill-restored").get("Contents", [])
        }
        assert restored_keys == source_keys
        for table in TABLES:
            assert rows(fresh_database, table) == rows(source_url, table), table
    finally:
        server.stop()

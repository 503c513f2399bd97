"""Transaction-scoped locks that serialise ingestion of the same image, patient or study.

PostgreSQL: an advisory lock (pg_advisory_xact_lock), released when the transaction ends,
so two associations or uploads creating the same new patient or study wait for each
other instead of both inserting and one failing on the unique constraint. SQLite needs
none: its transactions take the database's write lock when they begin (IMMEDIATE mode in
the settings). Locks are always taken in the order image, patient, study, so two
transactions never wait for each other in a cycle.
"""

from __future__ import annotations

import hashlib

from django.db import connection


def lock_key(namespace: str, value: str) -> int:
    """A signed 64-bit key for `value` in `namespace` (what pg_advisory_xact_lock takes)."""
    digest = hashlib.sha256(f"{namespace}\0{value}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def advisory_lock(namespace: str, value: str) -> None:
    """Hold a lock on (namespace, value) until the current transaction ends."""
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [lock_key(namespace, value)])

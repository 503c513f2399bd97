# ruff: noqa: RUF012
"""The dashboard's patient filter and search at 50,000 patients and 200,000 studies.

patient_identifier_upper serves identifier__iexact on every database. The search
(icontains on the hospital id, the name and the accession number: UPPER(column) LIKE
'%term%') can use an index only on PostgreSQL, through pg_trgm's trigram GIN indexes;
elsewhere, or where the extension cannot be created (it needs a role allowed to create
it), the search reads the tables as before, and says so in the log.
"""

import logging

import django.db.models.functions.text
from django.db import DatabaseError, migrations, models

logger = logging.getLogger(__name__)

# (index, table, column): each on UPPER(column), as Django's icontains compares.
TRIGRAM_INDEXES = (
    ("patient_identifier_trgm", "clinical_patient", "identifier"),
    ("patient_name_trgm", "clinical_patient", "name"),
    ("study_accession_trgm", "clinical_study", "accession_number"),
)


def trigram_indexes_create(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'")
        if cursor.fetchone() is None:
            try:
                cursor.execute("SAVEPOINT trgm")
                cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
                cursor.execute("RELEASE SAVEPOINT trgm")
            except DatabaseError:
                cursor.execute("ROLLBACK TO SAVEPOINT trgm")
                logger.warning(
                    "pg_trgm could not be created: the dashboard's search reads the "
                    "patient and study tables instead of trigram indexes"
                )
                return
        for name, table, column in TRIGRAM_INDEXES:
            cursor.execute(
                f'CREATE INDEX IF NOT EXISTS "{name}" ON "{table}" '
                f'USING gin ((UPPER("{column}"::text)) gin_trgm_ops)'
            )


def trigram_indexes_drop(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        for name, _, _ in TRIGRAM_INDEXES:
            cursor.execute(f'DROP INDEX IF EXISTS "{name}"')


class Migration(migrations.Migration):
    dependencies = [
        ("clinical", "0006_study_pathology_and_suspicious"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="patient",
            index=models.Index(
                django.db.models.functions.text.Upper("identifier"),
                name="patient_identifier_upper",
            ),
        ),
        migrations.RunPython(trigram_indexes_create, trigram_indexes_drop),
    ]

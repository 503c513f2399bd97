# ruff: noqa: RUF012
"""DRF's token table kept every API key in clear; django-rest-knox (digests, expiry)
replaces it. The old table goes, with every key in it: clients ask for a new token."""

from __future__ import annotations

from typing import Any

from django.db import migrations

OLD_TABLE = "authtoken_token"


def drop_plaintext_tokens(apps: Any, schema_editor: Any) -> None:
    connection = schema_editor.connection
    if OLD_TABLE in connection.introspection.table_names():
        schema_editor.execute(f"DROP TABLE {schema_editor.quote_name(OLD_TABLE)}")


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_roles")]

    operations = [
        migrations.RunPython(drop_plaintext_tokens, migrations.RunPython.noop),
    ]

# ruff: noqa: RUF012
"""Lesion.uuid: a lesion's identity outside this database (its DICOM tracking UID).

Added empty, filled with a random UUID per existing lesion, then made unique and
required: a unique column cannot be added with one default for rows that already exist.
"""

import uuid

from django.db import migrations, models


def lesion_uuids_fill(apps, schema_editor):
    Lesion = apps.get_model("clinical", "Lesion")
    for lesion in Lesion.objects.filter(uuid__isnull=True).only("pk"):
        lesion.uuid = uuid.uuid4()
        lesion.save(update_fields=["uuid"])


class Migration(migrations.Migration):
    dependencies = [
        ("clinical", "0011_lesion"),
    ]

    operations = [
        migrations.AddField(
            model_name="lesion",
            name="uuid",
            field=models.UUIDField(editable=False, null=True),
        ),
        migrations.RunPython(lesion_uuids_fill, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="lesion",
            name="uuid",
            field=models.UUIDField(default=uuid.uuid4, editable=False, unique=True),
        ),
    ]

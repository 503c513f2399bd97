"""The page benchmark's seed: COPY on PostgreSQL, bulk_create elsewhere, the same rows,
and a database the portal's own services go on writing to afterwards."""

from __future__ import annotations

import pytest
from django.db import connection
from django.urls import reverse

from bench.pages import REVIEWED_OF_TEN, SEED_MARK, seed
from portal.accounts.roles import RADIOLOGIST, assign_role
from portal.analyses.models import Analysis
from portal.clinical.models import Patient, Scan, Study
from portal.review.models import AgreementCount, Review

STUDIES, SCANS = 40, 3


@pytest.fixture
def seeded(db, django_user_model):
    reader = django_user_model.objects.create_user("bench-reader", password="x" * 20)
    assign_role(reader, RADIOLOGIST)
    # A row made before the seed: the seed's ids start after it.
    Patient.objects.create(identifier="EARLIER-1", name="Made before")
    analyses, reviews = seed(
        studies=STUDIES,
        scans_per_study=SCANS,
        user=reader,
        model_version="bench-model-1",
        report=lambda line: None,
    )
    return reader, analyses, reviews


def test_the_seed_writes_every_row_it_says(seeded):
    _, analyses, reviews = seeded
    assert analyses == STUDIES * SCANS == Analysis.objects.count()
    assert Scan.objects.count() == STUDIES * SCANS
    assert Study.objects.filter(description=SEED_MARK).count() == STUDIES
    assert Patient.objects.count() == 1 + STUDIES // 4
    assert reviews == Review.objects.count() > 0
    # Every signed reading is of a finished result with a verdict, in a reviewed study.
    assert not Review.objects.exclude(analysis__status="succeeded").exists()
    assert not Review.objects.filter(analysis__label="").exists()
    first_study = Study.objects.order_by("pk").first().pk
    read = {
        (study_id - first_study) % 10
        for study_id in Review.objects.values_list("scan__study_id", flat=True)
    }
    assert read and max(read) < REVIEWED_OF_TEN
    # JSON went in as JSON, not as a string of it.
    probabilities = Analysis.objects.exclude(probabilities=None).first().probabilities
    assert set(probabilities) == {"normal", "benign", "malignant"}


def test_the_services_columns_are_computed_after_the_rows(seeded):
    waiting = Study.objects.filter(awaiting_review=True)
    assert waiting.exists()
    assert waiting.count() < STUDIES  # the read studies are not waiting
    assert AgreementCount.objects.exists()


def test_the_portal_writes_after_the_seed_and_its_pages_read_it(seeded, client):
    reader, _, _ = seeded
    # Ids were given to COPY: the sequences must start after them.
    made = Patient.objects.create(identifier="AFTER-1", name="Made after")
    assert made.pk > Patient.objects.exclude(pk=made.pk).order_by("-pk").first().pk
    client.force_login(reader)
    response = client.get(reverse("review:dashboard"))
    assert response.status_code == 200
    assert len(response.context["page"].object_list) == 50
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stats WHERE tablename = %s",
                ["analyses_analysis"],
            )
            assert cursor.fetchone()[0] > 0  # analysed after the bulk load

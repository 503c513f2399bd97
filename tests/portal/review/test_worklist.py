from __future__ import annotations

from django.urls import reverse
from django.utils import timezone

from portal.clinical.services import patient_create, study_create
from portal.review.models import Review


def _study(user, identifier):
    patient = patient_create(identifier=identifier, name=f"Person {identifier}")
    return study_create(patient=patient, created_by=user)


def test_unreviewed_studies_most_suspicious_first_with_a_count_in_the_nav(
    client, user, radiologist, make_analysed_scan
):
    low = _study(user, "LOW")
    high = _study(user, "HIGH")
    mixed = _study(user, "MIXED")
    done = _study(user, "DONE")
    make_analysed_scan(
        low, user, probabilities={"normal": 0.8, "benign": 0.15, "malignant": 0.05}
    )
    make_analysed_scan(
        high, user, probabilities={"normal": 0.02, "benign": 0.08, "malignant": 0.9}
    )
    make_analysed_scan(
        mixed, user, probabilities={"normal": 0.1, "benign": 0.6, "malignant": 0.3}
    )
    make_analysed_scan(
        mixed, user, probabilities={"normal": 0.1, "benign": 0.4, "malignant": 0.5}
    )
    reviewed = make_analysed_scan(done, user)
    Review.objects.create(
        scan=reviewed,
        analysis=reviewed.analyses.get(),
        agrees_with_model=True,
        label="malignant",
        birads="5",
        author=radiologist,
        signed_at=timezone.now(),
    )
    client.force_login(radiologist)
    response = client.get(reverse("review:worklist"))
    studies = list(response.context["page"].object_list)
    assert [s.patient.identifier for s in studies] == ["HIGH", "MIXED", "LOW"]
    assert studies[1].max_malignant == 0.5
    assert 'Worklist <span class="count">3</span>' in response.content.decode()


def test_a_draft_does_not_take_a_study_off_the_worklist(
    client, user, radiologist, make_analysed_scan, study
):
    scan = make_analysed_scan(study, user)
    Review.objects.create(
        scan=scan,
        analysis=scan.analyses.get(),
        agrees_with_model=True,
        label="malignant",
        birads="5",
        author=radiologist,
    )
    client.force_login(radiologist)
    assert client.get(reverse("review:worklist")).context["page"].paginator.count == 1

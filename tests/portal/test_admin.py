from __future__ import annotations

import pytest
from django.urls import reverse

from portal.analyses.services import scan_submit
from portal.clinical.uploads import validate_content

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "model",
    ["clinical/patient", "clinical/study", "clinical/scan", "analyses/analysis"],
)
def test_admin_lists_and_searches_domain_models(
    client, staff_user, study, make_png, model
):
    scan_submit(
        study=study,
        upload=validate_content(filename="a.png", content=make_png()),
        uploaded_by=staff_user,
        model_version="test-model-1",
    )
    client.force_login(staff_user)
    app, name = model.split("/")
    from django.apps import apps

    obj = apps.get_model(app, name).objects.first()
    changelist = reverse(f"admin:{app}_{name}_changelist")
    assert client.get(changelist).status_code == 200
    assert client.get(changelist, {"q": "H-0001"}).status_code == 200
    assert (
        client.get(reverse(f"admin:{app}_{name}_change", args=[obj.pk])).status_code
        == 200
    )


def test_analysis_results_are_read_only_in_admin(client, staff_user, study, make_png):
    from portal.analyses.admin import AnalysisAdmin

    for field in (
        "status",
        "label",
        "probabilities",
        "confidence",
        "result_files",
        "model_version",
    ):
        assert field in AnalysisAdmin.readonly_fields
    # The files themselves are no form fields: shown as links to the portal's views.
    from portal.analyses.models import ARTIFACT_KINDS

    assert set(ARTIFACT_KINDS) <= set(AnalysisAdmin.exclude)


def test_admin_links_files_through_the_portal_download_views(
    client, staff_user, study, user
):
    from tests.portal.review.conftest import analysed_scan

    scan = analysed_scan(study, user)
    analysis = scan.analyses.get()
    client.force_login(staff_user)

    page = client.get(reverse("admin:analyses_analysis_change", args=[analysis.pk]))
    html = page.content.decode()
    assert reverse("analyses:artifact", args=[analysis.pk, "mask"]) in html
    assert analysis.mask.name not in html
    assert 'type="file"' not in html

    page = client.get(reverse("admin:clinical_scan_change", args=[scan.pk]))
    html = page.content.decode()
    assert reverse("clinical:scan_original", args=[scan.pk]) in html
    assert scan.original.name not in html
    assert 'type="file"' not in html


def test_admin_shows_the_distribution_flag_and_filters_by_it(client, staff_user, study):
    from tests.portal.review.conftest import FLAGGED, analysed_scan

    analysis = analysed_scan(study, staff_user, **FLAGGED).analyses.get()
    client.force_login(staff_user)
    page = client.get(reverse("admin:analyses_analysis_change", args=[analysis.pk]))
    html = page.content.decode()
    for label in ("In distribution", "Ood score", "Ood threshold", "Explained class"):
        assert f"{label}:</label>" in html, label
    # A null boolean shows as Django's icon: "no" for False.
    assert 'icon-no.svg" alt="False"' in html
    for value in ("97.25", "41.5", "Malignant"):
        assert value in html, value
    changelist = reverse("admin:analyses_analysis_changelist")
    assert (
        client.get(changelist, {"in_distribution__exact": "0"})
        .context["cl"]
        .result_count
        == 1
    )
    assert (
        client.get(changelist, {"in_distribution__exact": "1"})
        .context["cl"]
        .result_count
        == 0
    )

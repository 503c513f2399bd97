"""The API gives the signed reading's outline: its state, and the reader's mask to
download (audited); the model's stays the analysis's mask_url."""

from __future__ import annotations

import numpy as np

from ml.render import read_mask
from portal.audit.models import AccessRecord
from portal.review.services import review_save
from tests.portal.review.conftest import analysed_scan


def _sign(scan, reader, **outline):
    return review_save(
        analysis=scan.analyses.get(),
        author=reader,
        agrees_with_model=True,
        label="",
        birads="4A",
        sign=True,
        **outline,
    )


def test_the_scan_says_which_outline_is_signed(as_role, study, user):
    api = as_role("radiologist")
    corrected = analysed_scan(study, user, filename="a.png")
    unsigned = analysed_scan(study, user, filename="b.png")
    plain = analysed_scan(study, user, filename="c.png")
    edit = np.zeros((48, 64), bool)
    edit[4:9, 6:30] = True
    _sign(corrected, api.user, outline_state="corrected", outline_mask=edit)
    _sign(plain, api.user)

    scans = {
        s["id"]: s for s in api.get(f"/api/v1/studies/{study.pk}/").json()["scans"]
    }
    assert scans[unsigned.pk]["signed_outline"] is None
    assert scans[plain.pk]["signed_outline"] == {
        "state": "model",
        "review_version": 1,
        "mask_url": None,
    }
    signed = scans[corrected.pk]["signed_outline"]
    assert signed["state"] == "corrected"
    assert signed["mask_url"].endswith(f"/api/v1/scans/{corrected.pk}/signed-outline/")
    # The model's outline stays available, as the analysis's.
    assert scans[corrected.pk]["latest_analysis"]["mask_url"]

    response = api.get(signed["mask_url"])
    assert response.status_code == 200
    assert np.array_equal(read_mask(b"".join(response.streaming_content)), edit)
    assert AccessRecord.objects.filter(
        object_id=str(corrected.pk), detail="signed outline"
    ).exists()
    assert api.get(f"/api/v1/scans/{plain.pk}/signed-outline/").status_code == 404
    assert as_role(None).get(signed["mask_url"]).status_code == 403

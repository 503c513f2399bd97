"""dicomnet hears of signed readings through review's signal (review never imports it)."""

from __future__ import annotations

from typing import Any

import pytest

from portal.review.services import review_save, review_sign
from tests.portal.dicomnet.conftest import finish_analysis, store_scan
from tests.portal.ingest.factories import png

pytestmark = pytest.mark.django_db


@pytest.fixture
def sends(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(
        "portal.dicomnet.receivers.queue_results_send",
        lambda **kwargs: calls.append(kwargs) or True,
    )
    return calls


def test_every_signed_reading_is_sent_and_a_draft_is_not(
    study: Any, user: Any, make_user: Any, sends: list[dict[str, Any]]
) -> None:
    analysis = finish_analysis(store_scan(study, user, png(value=40), name="a.png"))
    reader = make_user("radiologist", "dr-receivers")
    fields = {"agrees_with_model": True, "label": "malignant", "birads": "5"}

    draft = review_save(analysis=analysis, author=reader, **fields)
    assert sends == []
    # Signing a saved draft goes to the PACS as review_save(sign=True) does.
    review_sign(review=draft, user=reader)
    assert sends == [{"analysis_id": analysis.pk, "review_id": draft.pk}]
    amended = review_save(analysis=analysis, author=reader, sign=True, **fields)
    assert sends[-1] == {"analysis_id": analysis.pk, "review_id": amended.pk}
    assert len(sends) == 2

from __future__ import annotations

import pytest

from tests.portal.review.conftest import analysed_scan


@pytest.fixture
def make_analysed_scan():
    return analysed_scan

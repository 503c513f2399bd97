"""A radiologist corrects the lesion outline in a real browser (Playwright driving
Debian's Chromium) on a zoomed view: paints, erases, undoes, signs; the training export
then holds exactly the mask the editor showed."""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.e2e import test_browser_review as review_workflow
from tests.portal.review.conftest import analysed_scan

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

chromium = review_workflow.chromium
people = review_workflow.people
screenshots = review_workflow.screenshots
WIDTH, HEIGHT = 64, 48  # analysed_scan's size; its model mask is rows 10:30, cols 20:40


@pytest.fixture
def scan_id(people: dict[str, Any], media_root: Path) -> int:
    from portal.accounts.roles import STAFF
    from portal.clinical.services import patient_create, study_create

    staff = people[STAFF]
    patient = patient_create(identifier="OUT-0001", name="Outline Test Patient")
    study = study_create(patient=patient, created_by=staff, accession_number="OUT-1")
    return analysed_scan(study, staff, filename="left-breast.png").pk


def _bits(page: Any) -> np.ndarray:
    values = page.evaluate("Array.from(window.BusOutlineEditor.bits())")
    return np.asarray(values, bool).reshape(HEIGHT, WIDTH)


def _stroke(page: Any, points: list[tuple[float, float]]) -> None:
    """Drag through image points (x, y), mapped to the screen by the viewer's transform."""
    # The editor's buttons sit by the review form: the scan may have scrolled away.
    page.locator("#viewer-canvas").scroll_into_view_if_needed()
    screen = page.evaluate(
        """(points) => {
          const canvas = document.getElementById("viewer-canvas");
          const box = canvas.getBoundingClientRect();
          const k = Number(canvas.dataset.cssPerImagePixel);
          const [cx, cy] = canvas.dataset.centre.split(",").map(Number);
          return points.map(([x, y]) => [box.left + box.width / 2 + (x - cx) * k,
                                         box.top + box.height / 2 + (y - cy) * k]);
        }""",
        [list(p) for p in points],
    )
    page.mouse.move(*screen[0])
    page.mouse.down()
    for point in screen[1:]:
        page.mouse.move(*point, steps=8)
    page.mouse.up()


def test_an_edited_outline_is_signed_and_exported_as_drawn(
    live_server, people, scan_id, screenshots, chromium, settings, tmp_path
):
    from portal.accounts.roles import RADIOLOGIST

    settings.TRAINING_EXPORT_KEY = "browser-test-site-key-0123456789"
    base = live_server.url
    page = review_workflow._log_in(chromium, base, people[RADIOLOGIST].username)
    page.goto(f"{base}/scans/{scan_id}/review/")
    page.wait_for_selector("#viewer[data-ready=true]")
    page.wait_for_selector("#outline-editor[data-ready=true]")
    editor = page.locator("#outline-editor")

    # It starts from the model's outline.
    model = np.zeros((HEIGHT, WIDTH), bool)
    model[10:30, 20:40] = True
    assert np.array_equal(_bits(page), model)
    assert editor.get_attribute("data-state") == "model"

    page.click("#zoom-in")  # the editor follows the viewer's zoom
    centre = page.get_attribute("#viewer-canvas", "data-centre")
    page.click("[data-outline=toggle]")
    for _ in range(4):
        page.keyboard.press("[")  # brush 12 -> 4 image pixels
    assert page.input_value("[data-outline=size]") == "4"

    _stroke(page, [(14, 36), (50, 36)])  # a band below the model's square
    page.keyboard.press("e")
    assert editor.get_attribute("data-tool") == "eraser"
    _stroke(page, [(30, 12), (30, 38)])  # cut through square and band
    page.keyboard.press("b")
    before_undo = _bits(page)
    _stroke(page, [(14, 14), (18, 14)])
    assert not np.array_equal(_bits(page), before_undo)
    page.keyboard.press("z")
    edit = _bits(page)
    assert np.array_equal(edit, before_undo)
    # Painting did not pan the view.
    assert page.get_attribute("#viewer-canvas", "data-centre") == centre

    assert edit[36, 16] and edit[36, 46]  # the band
    assert not edit[36, 30] and not edit[20, 30]  # erased
    assert edit[20, 24] and edit[20, 36]  # the model's square, kept either side
    assert not edit[5, 5]
    assert editor.get_attribute("data-state") == "corrected"
    screenshots(page, "01-outline-edited")

    page.keyboard.press("Escape")
    page.select_option("select[name=birads]", "4A")
    with page.expect_navigation():
        page.click("#sign")
    page.wait_for_url(re.compile(rf".*/scans/{scan_id}/review/(\?.*)?$"))
    assert page.inner_text("#review-state").startswith("signed")
    # The signed outline is what the editor shows when the page comes back.
    page.wait_for_selector("#outline-editor[data-ready=true]")
    assert np.array_equal(_bits(page), edit)
    page.context.close()

    def export() -> Path:
        from portal.review.training_export import export_training_set

        out = tmp_path / "export"
        export_training_set(out=out)
        return out

    out = review_workflow._in_thread(export)
    with (out / "MANIFEST.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["segmentation"] == "reader"
    with Image.open(out / row["mask_path"]) as image:
        exported = np.asarray(image.convert("L")) >= 128
    assert np.array_equal(exported, edit)

"""The radiologist workflow in a real browser (Playwright driving Debian's Chromium).

Staff log in, register a patient and a study, upload three real scans and watch the
results arrive without reloading; a radiologist opens the worklist, toggles every
overlay, signs off with a corrected label and downloads the report; the audit trail
shows each step. Screenshots of the key pages go to test-artifacts/.

`test_review_workflow_with_a_real_worker` runs the real Celery worker and model (and
skips when there are no trained weights); `..._with_a_stub_worker` runs the same browser
steps with an in-process stand-in that writes synthetic results through the same
services, so the pages are tested even on a machine without a model.
"""

from __future__ import annotations

import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.contrib.contenttypes.models import ContentType
from django.db import connection

from bench.launch import tail
from portal.accounts.roles import ADMINISTRATOR, RADIOLOGIST, STAFF, assign_role
from tests.conftest import SCANS_DIR
from tests.portal.review.pdftext import pdf_text

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser-review"
PASSWORD = "browser-test-password-42!"
# Real scans kept with the tests (tests/fixtures/scans): a JPEG and two grey PNGs. The
# viewer is checked on the first: its lesion is in the middle (where the heatmaps are
# checked for colour) and its middle is mid-grey (where contrast is checked).
IMAGES = (
    "benign/case014.jpg",
    "malignant/case205.png",
    "normal/case209.png",
)
# Model load and three analyses on a slow shared CPU.
TIMEOUT_S = float(os.environ.get("E2E_TIMEOUT", "420"))


@pytest.fixture
def chromium() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(
            f"{CHROMIUM} is absent: install Debian's chromium (apt-get install chromium)"
        )
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread: the test's database work
    # goes through _in_thread, and this fixture comes last so the others set up and tear
    # down outside the loop.
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        browser.close()


@pytest.fixture
def people(django_user_model: Any) -> dict[str, Any]:
    people = {}
    for role, username in (
        (STAFF, "sonographer"),
        (RADIOLOGIST, "dr-reader"),
        (ADMINISTRATOR, "auditor"),
    ):
        user = django_user_model.objects.create_user(
            username=username, password=PASSWORD, first_name=username.title()
        )
        assign_role(user, role)
        people[role] = user
    return people


@pytest.fixture
def screenshots(request: pytest.FixtureRequest) -> Callable[[Any, str], None]:
    folder = ARTIFACTS / request.node.name
    folder.mkdir(parents=True, exist_ok=True)

    def shoot(page: Any, name: str) -> None:
        page.screenshot(path=str(folder / f"{name}.png"), full_page=True)

    return shoot


# --- the analysis back ends ----------------------------------------------------------


class StubWorker(threading.Thread):
    """Claims and completes analyses with synthetic results through the real services."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.jobs: queue.Queue[int] = queue.Queue()
        self.stopping = threading.Event()
        self.errors: list[str] = []

    def enqueue(self, analysis_id: int, *, countdown: float | None = None) -> None:
        self.jobs.put(analysis_id)

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                analysis_id = self.jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._analyse(analysis_id)
            except Exception as exc:  # noqa: BLE001 - reported by the test, not lost
                self.errors.append(f"analysis {analysis_id}: {exc!r}")
            finally:
                connection.close()

    def _analyse(self, analysis_id: int) -> None:
        from django.core.files.storage import default_storage

        from ml.decode import decode_image
        from ml.render import heatmap_png, mask_png
        from portal.analyses import services
        from portal.analyses.models import Analysis

        time.sleep(1.5)  # let the page see the row queued first
        if not services.analysis_claim(analysis_id=analysis_id, worker="stub"):
            return
        time.sleep(1.5)
        analysis = Analysis.objects.select_related("scan").get(pk=analysis_id)
        with default_storage.open(analysis.scan.original.name, "rb") as stored:
            image = decode_image(stored).pixels
        height, width = image.shape[:2]
        rows, cols = np.ogrid[:height, :width]
        distance = ((rows - height / 2) / (height / 4)) ** 2 + (
            (cols - width / 2) / (width / 4)
        ) ** 2
        mask = distance <= 1
        heat = np.clip(1 - distance / 2, 0, 1).astype(np.float32)
        probabilities = {"normal": 0.1, "benign": 0.25, "malignant": 0.65}
        services.analysis_record_success(
            analysis_id=analysis_id,
            result={
                "label": "malignant",
                "probabilities": probabilities,
                "confidence": 0.65,
                "lesion_area_fraction": float(mask.mean()),
                "bbox": [width // 4, height // 4, 3 * width // 4, 3 * height // 4],
            },
            artifacts={
                "mask": mask_png(mask),
                "gradcam_map": heatmap_png(heat),
                "seg_gradcam_map": heatmap_png(heat[::-1, ::-1]),
            },
        )


@pytest.fixture
def stub_worker(
    monkeypatch: pytest.MonkeyPatch, media_root: Path, weights_dir: Path
) -> Iterator[StubWorker]:
    worker = StubWorker()
    monkeypatch.setattr("portal.analyses.queue.send_analysis", worker.enqueue)
    worker.start()
    yield worker
    worker.stopping.set()
    worker.join(timeout=10)


# --- the scenario --------------------------------------------------------------------


def _log_in(
    browser: Any,
    base: str,
    username: str,
    viewport: dict[str, int] | None = None,
) -> Any:
    """A new browser context logged in as `username`, on the dashboard (the reading
    tests ask for a laptop's 1366x768; the close of `page.context` is the caller's)."""
    context = browser.new_context(
        accept_downloads=True, viewport=viewport or {"width": 1400, "height": 1000}
    )
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(f"{base}/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("form button[type=submit]")
    page.wait_for_url(re.compile(r".*/dashboard/$"))
    return page


def _register_and_upload(page: Any, base: str, shoot: Any) -> int:
    page.goto(f"{base}/patients/")
    page.fill("input[name=identifier]", "BRW-0001")
    page.fill("input[name=name]", "Browser Test Patient")
    page.fill("input[name=birth_date]", "1971-03-04")
    page.click("text=Create patient")
    page.wait_for_url(re.compile(r".*/patients/\d+/$"))
    page.fill("input[name=accession_number]", "ACC-BROWSER-1")
    page.fill("input[name=study_date]", "2026-11-20")
    page.click("text=Create study")
    page.wait_for_url(re.compile(r".*/studies/\d+/$"))
    study_id = int(re.search(r"/studies/(\d+)/$", page.url).group(1))
    page.set_input_files(
        "input[name=files]", [str(SCANS_DIR / name) for name in IMAGES]
    )
    with page.expect_navigation():
        page.click("text=Upload and analyse")
    page.wait_for_selector("article.scan >> nth=2")
    shoot(page, "01-study-uploaded")
    return study_id


def _watch_until_done(page: Any, shoot: Any, check_worker: Callable[[], None]) -> None:
    # A marker on the window survives only as long as the page is not reloaded.
    page.evaluate("window.__sameDocument = true")
    statuses = page.locator("article.scan .status")
    assert statuses.count() == 3
    seen_pending = any(
        text in ("queued", "running") for text in statuses.all_inner_texts()
    )
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        texts = statuses.all_inner_texts()
        seen_pending = seen_pending or any(t in ("queued", "running") for t in texts)
        assert "failed" not in texts, page.locator(
            "article.scan .reason"
        ).all_inner_texts()
        if texts == ["succeeded"] * 3:
            break
        check_worker()
        assert time.monotonic() < deadline, f"still {texts} after {TIMEOUT_S:.0f}s"
        page.wait_for_timeout(1000)
    assert seen_pending, "the page never showed a queued or running analysis"
    # The study's review state follows the live panel: results in, now to be read.
    page.wait_for_function(
        "document.getElementById('study-review-state').textContent === 'unreviewed'"
    )
    assert page.evaluate("window.__sameDocument === true"), "the page was reloaded"
    page.wait_for_selector("article.scan .probabilities >> nth=2")
    # Each scan's three result pictures are drawn in the page from the stored outputs.
    page.wait_for_selector("canvas.thumb[data-drawn=true] >> nth=8")
    shoot(page, "02-study-analysed")
    page.click("text=Dashboard")
    page.wait_for_url(re.compile(r".*/dashboard/$"))
    assert page.locator("#dashboard-rows tbody tr").count() == 3
    assert "BRW-0001" in page.inner_text("#dashboard-rows")
    shoot(page, "02b-dashboard")


def _review_every_scan(
    page: Any, base: str, study_id: int, shoot: Any
) -> tuple[list[int], str]:
    page.click("#nav-worklist")
    page.wait_for_url(re.compile(r".*/worklist/$"))
    assert page.inner_text("#nav-worklist .count") == "1"
    assert "BRW-0001" in page.inner_text("#worklist-rows")
    shoot(page, "03-worklist")
    page.click("#worklist-rows >> text=Open study")
    page.wait_for_url(re.compile(rf".*/studies/{study_id}/$"))
    assert page.inner_text("#study-review-state") == "unreviewed"
    review_urls = [
        page.locator("a.review-link").nth(i).get_attribute("href") for i in range(3)
    ]
    scan_ids = [int(re.search(r"/scans/(\d+)/", url).group(1)) for url in review_urls]
    for index, url in enumerate(review_urls):
        if index == 0:
            # A scan whose pixel spacing is known, as a DICOM file's would be.
            _in_thread(_set_pixel_spacing, scan_ids[0], 0.1, 0.2)
        page.goto(base + url)
        page.wait_for_selector("#viewer[data-ready=true]")
        if index == 0:
            _use_the_viewer(page, shoot)
            predicted = page.inner_text("#model-output .label strong").strip().lower()
            corrected = "malignant" if predicted != "malignant" else "benign"
            page.check("input[name=agrees_with_model][value=no]")
            page.select_option("select[name=label]", corrected)
            page.select_option("select[name=birads]", "3")
            page.fill("textarea[name=note]", "Reader note: see the margins.")
        else:
            page.check("input[name=agrees_with_model][value=yes]")
            page.select_option("select[name=birads]", "4A")
        with page.expect_navigation():
            page.click("#sign")
        assert page.inner_text("#review-state").startswith("signed")
        if index == 0:
            shoot(page, "05-review-signed")
    page.goto(f"{base}/studies/{study_id}/")
    assert page.inner_text("#study-review-state") == "reviewed"
    shoot(page, "06-study-reviewed")
    return scan_ids, corrected


CANVAS_MEAN = """(box) => {
  const canvas = document.getElementById('viewer-canvas');
  const [x, y, w, h] = box.map((v, i) => Math.round(v * (i % 2 ? canvas.height : canvas.width)));
  const data = canvas.getContext('2d').getImageData(x, y, w, h).data;
  const n = data.length / 4;
  const sums = [0, 0, 0];
  let lum = 0, lum2 = 0;
  for (let p = 0; p < data.length; p += 4) {
    for (let c = 0; c < 3; c++) sums[c] += data[p + c];
    const l = (data[p] + data[p + 1] + data[p + 2]) / 3;
    lum += l;
    lum2 += l * l;
  }
  return sums.map((s) => s / n).concat([Math.sqrt(Math.max(0, lum2 / n - (lum / n) ** 2))]);
}"""
CENTRE = [0.4, 0.4, 0.2, 0.2]  # x, y, width, height as fractions of the canvas


def _canvas_mean(page: Any, box: list[float] = CENTRE) -> np.ndarray:
    """Mean red, green, blue over a box of the canvas."""
    return np.array(page.evaluate(CANVAS_MEAN, box))[:3]


def _canvas_spread(page: Any, box: list[float]) -> float:
    """Standard deviation of brightness over a box of the canvas."""
    return float(page.evaluate(CANVAS_MEAN, box)[3])


def _use_the_viewer(page: Any, shoot: Any) -> None:
    """Every overlay toggles and fades, and zoom, pan, brightness, contrast and the
    ruler work: checked on the canvas's pixels and the viewer's readouts."""
    page.wait_for_selector("#viewer[data-ready=true]")
    canvas = page.locator("#viewer-canvas")
    assert canvas.get_attribute("data-layers") == "outline"
    plain = _canvas_mean(page)
    for kind in ("gradcam", "seg_gradcam"):
        assert page.get_attribute(f"#toggle-{kind}", "data-loaded") == "true"
        page.locator(f"#toggle-{kind}").click()
        assert kind in canvas.get_attribute("data-layers").split()
        coloured = _canvas_mean(page)
        # The stub's heatmaps are hot in the middle: red shows there.
        assert coloured[0] - coloured[2] > plain[0] - plain[2] + 40, (kind, coloured)
        page.fill(f"#opacity-{kind}", "10")
        faint = _canvas_mean(page)
        assert abs(faint - plain).sum() < abs(coloured - plain).sum() / 2, kind
        page.fill(f"#opacity-{kind}", "50")
        page.locator(f"#toggle-{kind}").click()
        assert kind not in canvas.get_attribute("data-layers").split()
        assert np.allclose(_canvas_mean(page), plain, atol=1)
    page.locator("#toggle-outline").click()
    assert canvas.get_attribute("data-layers") == ""
    page.locator("#toggle-outline").click()
    for kind in ("gradcam", "seg_gradcam"):
        page.locator(f"#toggle-{kind}").click()
    shoot(page, "04-review-all-overlays")
    for kind in ("gradcam", "seg_gradcam"):
        page.locator(f"#toggle-{kind}").click()

    # Brightness and contrast change the scan.
    page.fill("#brightness", "60")
    brighter = _canvas_mean(page)
    assert brighter.mean() > plain.mean() + 10
    page.fill("#brightness", "0")
    page.locator("#toggle-outline").click()  # the scan alone
    whole = [0.25, 0.25, 0.5, 0.5]  # inside the scan, whatever the letterbox
    spread = _canvas_spread(page, whole)
    page.fill("#contrast", "-80")
    assert _canvas_spread(page, whole) < spread * 0.4
    page.fill("#contrast", "80")
    assert _canvas_spread(page, whole) > spread * 1.2
    page.fill("#contrast", "0")
    page.locator("#toggle-outline").click()

    # Zoom with the button and the wheel, then pan by dragging.
    page.click("#zoom-in")
    assert float(canvas.get_attribute("data-zoom")) == pytest.approx(1.5)
    assert page.inner_text("#zoom-level") == "150%"
    box = canvas.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)
    page.mouse.wheel(0, -100)
    assert float(canvas.get_attribute("data-zoom")) == pytest.approx(1.875)
    before = canvas.get_attribute("data-centre")
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx + 80, cy + 40, steps=4)
    page.mouse.up()
    after = canvas.get_attribute("data-centre")
    (bx, by), (ax, ay) = (map(float, c.split(",")) for c in (before, after))
    per_pixel = 1 / float(canvas.get_attribute("data-css-per-image-pixel"))
    assert ax == pytest.approx(bx - 80 * per_pixel, abs=1)
    assert ay == pytest.approx(by - 40 * per_pixel, abs=1)
    shoot(page, "04b-review-zoomed")
    page.click("#view-reset")
    assert float(canvas.get_attribute("data-zoom")) == 1

    # The ruler: 200 screen pixels across, at the scan's spacing (0.2 mm a column).
    page.click("#ruler-toggle")
    per_pixel = 1 / float(canvas.get_attribute("data-css-per-image-pixel"))
    page.mouse.move(cx - 100, cy)
    page.mouse.down()
    page.mouse.move(cx + 100, cy, steps=5)
    page.mouse.up()
    reading = page.inner_text("#ruler-readout")
    value, unit = reading.split()[:2]
    assert unit == "mm", reading
    assert float(value) == pytest.approx(200 * per_pixel * 0.2, abs=0.3)
    shoot(page, "04c-review-ruler")
    page.click("#ruler-toggle")


def _download_report(page: Any, study_id: int, corrected: str) -> str:
    with page.expect_download() as download_info:
        page.click("#report-link")
    download = download_info.value
    assert download.suggested_filename == f"study-{study_id}-report.pdf"
    target = ARTIFACTS / download.suggested_filename
    download.save_as(str(target))
    text = pdf_text(target.read_bytes())
    for expected in (
        "Browser Test Patient",
        "BRW-0001",
        "ACC-BROWSER-1",
        f"{corrected} (corrected label)",
        "Reader note: see the margins.",
        "decision support, not a diagnosis",
        "Signed by",
    ):
        assert expected in text, expected
    return text


def _set_pixel_spacing(scan_id: int, row_mm: float, col_mm: float) -> None:
    from portal.clinical.models import Scan

    Scan.objects.filter(pk=scan_id).update(
        pixel_spacing_row_mm=row_mm, pixel_spacing_col_mm=col_mm
    )


def _in_thread(function: Callable[..., Any], *args: Any) -> Any:
    """Database work outside Playwright's event loop, on a connection closed after."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = function(*args)
        except BaseException as exc:  # noqa: BLE001 - raised again in the test's thread
            outcome["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _audit_covers_each_step(
    people: dict[str, Any], study_id: int, scan_ids: list[int]
) -> None:
    from auditlog.models import LogEntry

    from portal.audit.models import AccessRecord
    from portal.clinical.models import Patient, Scan, Study
    from portal.review.models import Review

    staff, radiologist = people[STAFF], people[RADIOLOGIST]
    study_type = ContentType.objects.get_for_model(Study)
    scan_type = ContentType.objects.get_for_model(Scan)
    records = AccessRecord.objects.all()
    assert records.filter(
        user=staff, action="view", content_type=study_type, object_id=str(study_id)
    ).exists()
    assert records.filter(
        user=radiologist, action="view", content_type=study_type
    ).exists()
    for scan_id in scan_ids:
        assert records.filter(
            user=radiologist,
            action="view",
            detail="review page",
            content_type=scan_type,
            object_id=str(scan_id),
        ).exists()
    for detail in ("outline", "gradcam_map", "seg_gradcam_map", "display image"):
        assert records.filter(
            user=radiologist, action="download", detail=detail
        ).exists(), detail
    assert records.filter(
        user=radiologist, action="download", detail="report", object_id=str(study_id)
    ).exists()
    assert all(r.client_address == "127.0.0.1" for r in records)

    patient = Patient.objects.get(identifier="BRW-0001")
    assert (
        LogEntry.objects.get_for_object(patient)
        .filter(action=LogEntry.Action.CREATE, actor=staff)
        .exists()
    )
    study = Study.objects.get(pk=study_id)
    assert (
        LogEntry.objects.get_for_object(study)
        .filter(action=LogEntry.Action.CREATE, actor=staff)
        .exists()
    )
    for scan in study.scans.all():
        assert (
            LogEntry.objects.get_for_object(scan)
            .filter(action=LogEntry.Action.CREATE, actor=staff)
            .exists()
        )
    for review in Review.objects.filter(scan__study=study):
        assert (
            LogEntry.objects.get_for_object(review)
            .filter(action=LogEntry.Action.CREATE, actor=radiologist)
            .exists()
        )


def _check_the_audit(
    browser: Any,
    base: str,
    people: dict[str, Any],
    study_id: int,
    scan_ids: list[int],
    shoot: Any,
) -> None:
    _in_thread(_audit_covers_each_step, people, study_id, scan_ids)

    # And an administrator sees it all in the admin.
    page = _log_in(browser, base, people[ADMINISTRATOR].username)
    page.goto(f"{base}/admin/audit/accessrecord/?q=dr-reader")
    table = page.inner_text("#result_list")
    for detail in ("review page", "outline", "gradcam", "report"):
        assert detail in table, detail
    shoot(page, "07-admin-access-log")
    page.goto(f"{base}/admin/auditlog/logentry/")
    log = page.inner_text("#result_list")
    assert "Review" in log or "review" in log
    shoot(page, "08-admin-change-log")
    assert page.locator("text=Add log entry").count() == 0
    page.context.close()


def _scenario(
    browser: Any,
    base: str,
    people: dict[str, Any],
    shoot: Any,
    check_worker: Callable[[], None],
) -> None:
    started = time.monotonic()

    def step(name: str) -> None:  # shown with the output of a failing test
        print(f"[{time.monotonic() - started:6.1f}s] {name}", flush=True)

    staff_page = _log_in(browser, base, people[STAFF].username)
    step("staff logged in")
    study_id = _register_and_upload(staff_page, base, shoot)
    step("patient, study and three uploads")
    _watch_until_done(staff_page, shoot, check_worker)
    step("all analysed, page not reloaded")
    staff_page.context.close()

    page = _log_in(browser, base, people[RADIOLOGIST].username)
    step("radiologist logged in")
    scan_ids, corrected = _review_every_scan(page, base, study_id, shoot)
    step("worklist, overlays, three sign-offs")
    _download_report(page, study_id, corrected)
    step("report downloaded and read")
    page.context.close()

    _check_the_audit(browser, base, people, study_id, scan_ids, shoot)
    step("audit checked")


def test_review_workflow_with_a_real_worker(
    live_server, people, real_worker, screenshots, chromium
):
    process, log_path = real_worker

    def check_worker() -> None:
        assert process.poll() is None, f"worker died:\n{tail(log_path)}"

    _scenario(chromium, live_server.url, people, screenshots, check_worker)


def test_review_workflow_with_a_stub_worker(
    live_server, people, stub_worker, screenshots, chromium
):
    def check_worker() -> None:
        assert not stub_worker.errors, stub_worker.errors

    _scenario(chromium, live_server.url, people, screenshots, check_worker)

"""Review-page paint benchmark: how soon a radiologist sees the review page in Chromium.

In a throwaway database of the configured kind (created and dropped here, never the
configured one) and a temporary media folder, it stores one analysed scan whose display
copy is 1024 px wide (a synthetic 1280x960 speckle image, as the upload path reduces it)
with its mask and both heatmaps, serves the portal from a live server thread in this
process, signs a radiologist in with headless Chromium (/usr/bin/chromium) at 1366x768,
and loads the review page `loads` times. For each load it reads from the browser's own
timeline (milliseconds after navigation start): first paint, first contentful paint, and
the scan drawn in the viewer with its overlays (#viewer[data-ready=true]).
"""

from __future__ import annotations

import logging
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from django.db import connection, connections
from django.test.utils import override_settings

logger = logging.getLogger(__name__)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
VIEWPORT = {"width": 1366, "height": 768}
PASSWORD = "bench-paint-password-5521"
TARGET_MS = 1000.0
TIMELINE = """() => {
  const paints = Object.fromEntries(
    performance.getEntriesByType('paint').map((e) => [e.name, e.startTime]));
  const ready = performance.getEntriesByName('viewer-ready');
  return {
    first_paint: paints['first-paint'] ?? null,
    first_contentful_paint: paints['first-contentful-paint'] ?? null,
    viewer_ready: ready.length ? ready[0].startTime : null,
  };
}"""


@dataclass
class PaintResult:
    display_width: int = 0
    display_height: int = 0
    first_paint: list[float] = field(default_factory=list)
    first_contentful_paint: list[float] = field(default_factory=list)
    viewer_ready: list[float] = field(default_factory=list)

    def lines(self) -> list[str]:
        heading = (
            f"review page in Chromium at {VIEWPORT['width']}x{VIEWPORT['height']}, "
            f"display copy {self.display_width}x{self.display_height} px, "
            f"{len(self.first_paint)} loads (ms after navigation start)"
        )
        out = [heading]
        for name in ("first_paint", "first_contentful_paint", "viewer_ready"):
            values = getattr(self, name)
            out.append(
                f"  {name:24s} median {statistics.median(values):7.1f}  "
                f"max {max(values):7.1f}"
            )
        worst = max(self.first_paint)
        verdict = "meets" if worst < TARGET_MS else "MISSES"
        out.append(
            f"  first paint {verdict} the {TARGET_MS:.0f} ms target (worst load)"
        )
        return out


def _speckle(width: int, height: int, seed: int = 7) -> np.ndarray:
    """A grey ultrasound-like picture: speckle over a darker oval 'lesion'."""
    rng = np.random.default_rng(seed)
    speckle = rng.gamma(2.0, 40.0, size=(height, width))
    rows, cols = np.ogrid[:height, :width]
    oval = ((rows - height / 2) / (height / 5)) ** 2 + (
        (cols - width / 2) / (width / 6)
    ) ** 2 <= 1
    speckle[oval] *= 0.35
    return np.clip(speckle, 0, 255).astype(np.uint8)


def _seed_scan(user: Any) -> tuple[int, int, int]:
    """One analysed scan; returns its id and its display copy's size."""
    from django.core.files.base import ContentFile
    from PIL import Image

    from ml.render import display_png, heatmap_png, mask_png
    from portal.analyses.models import Analysis
    from portal.clinical.models import Scan
    from portal.clinical.services import patient_create, study_create
    from portal.review.services import study_review_refresh

    pixels = _speckle(1280, 960)
    patient = patient_create(identifier="PAINT-1", name="Paint Bench")
    study = study_create(patient=patient, created_by=user)
    scan = Scan(
        study=study,
        original_filename="paint.png",
        sha256="1" * 64,
        width=pixels.shape[1],
        height=pixels.shape[0],
        format="PNG",
        uploaded_by=user,
    )
    display = display_png(pixels)
    scan.original.save("original.png", ContentFile(display), save=False)
    scan.display.save("display.png", ContentFile(display), save=False)
    scan.save()
    mask = np.zeros(pixels.shape, bool)
    mask[380:580, 430:850] = True
    heat = np.zeros((16, 16), np.float32)
    heat[5:11, 5:11] = 1.0
    analysis = Analysis(
        scan=scan,
        model_version="bench-model-1",
        status=Analysis.Status.SUCCEEDED,
        label="malignant",
        confidence=0.72,
        probabilities={"normal": 0.08, "benign": 0.2, "malignant": 0.72},
        lesion_area_fraction=float(mask.mean()),
        bbox=[430, 380, 850, 580],
        explained_class="malignant",
    )
    analysis.mask.save("mask.png", ContentFile(mask_png(mask)), save=False)
    analysis.gradcam_map.save("g.png", ContentFile(heatmap_png(heat)), save=False)
    analysis.seg_gradcam_map.save("s.png", ContentFile(heatmap_png(heat.T)), save=False)
    analysis.save()
    study_review_refresh(study_id=study.pk)
    with Image.open(scan.display.open("rb")) as image:
        width, height = image.size
    return scan.pk, width, height


def _serve() -> Any:
    from django.contrib.staticfiles.handlers import StaticFilesHandler
    from django.test.testcases import LiveServerThread

    server = LiveServerThread("127.0.0.1", StaticFilesHandler, port=0)
    server.daemon = True
    server.start()
    server.is_ready.wait()
    if server.error:
        raise server.error
    return server


def _measure(base: str, scan_id: int, loads: int, result: PaintResult) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(f"{base}/accounts/login/")
        page.fill("input[name=username]", "bench-paint-radiologist")
        page.fill("input[name=password]", PASSWORD)
        page.click("form button[type=submit]")
        page.wait_for_url(f"{base}/dashboard/")
        url = f"{base}/scans/{scan_id}/review/?flow=worklist"
        # The viewer's readiness as a mark on the page's own timeline.
        page.add_init_script(
            "new MutationObserver((_, observer) => {"
            " const v = document.getElementById('viewer');"
            " if (v && v.dataset.ready === 'true') {"
            "  performance.mark('viewer-ready'); observer.disconnect(); }"
            "}).observe(document, {subtree: true, attributes: true,"
            " attributeFilter: ['data-ready']});"
        )
        page.goto(url)  # a first load warms the server and the browser's cache
        page.wait_for_selector("#viewer[data-ready=true]")
        for _ in range(loads):
            page.goto(url)
            page.wait_for_selector("#viewer[data-ready=true]")
            timeline = page.evaluate(TIMELINE)
            result.first_paint.append(timeline["first_paint"])
            result.first_contentful_paint.append(timeline["first_contentful_paint"])
            result.viewer_ready.append(timeline["viewer_ready"])
        browser.close()


def run(*, loads: int, report: Callable[[str], None]) -> PaintResult:
    from django.contrib.auth import get_user_model

    from portal.accounts.roles import RADIOLOGIST, assign_role

    if not CHROMIUM.exists():
        raise SystemExit(f"{CHROMIUM} is absent: apt-get install chromium")
    work_dir = Path(tempfile.mkdtemp(prefix="bench-paint-"))
    old_name = connection.settings_dict["NAME"]
    test_settings = connection.settings_dict.setdefault("TEST", {})
    old_test_name = test_settings.get("NAME")
    if connection.vendor == "sqlite":
        test_settings["NAME"] = str(work_dir / "bench.sqlite3")
    report(f"creating a throwaway {connection.vendor} database (migrations)")
    connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    media = work_dir / "media"
    media.mkdir()
    storages = {
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {
            "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        },
    }
    server = None
    try:
        with override_settings(
            MEDIA_ROOT=media, STORAGES=storages, ALLOWED_HOSTS=["127.0.0.1"]
        ):
            user = get_user_model().objects.create_user(
                "bench-paint-radiologist", password=PASSWORD
            )
            assign_role(user, RADIOLOGIST)
            scan_id, width, height = _seed_scan(user)
            result = PaintResult(display_width=width, display_height=height)
            server = _serve()
            base = f"http://127.0.0.1:{server.port}"
            report(f"loading the review page {loads} times in Chromium")
            started = time.monotonic()
            _measure(base, scan_id, loads, result)
            report(f"done in {time.monotonic() - started:.1f} s")
            return result
    finally:
        if server is not None:
            server.terminate()
        connections.close_all()
        try:
            connection.creation.destroy_test_db(old_name, verbosity=0)
        except Exception:
            logger.warning("could not drop the benchmark database", exc_info=True)
        if old_test_name is None:
            test_settings.pop("NAME", None)
        else:
            test_settings["NAME"] = old_test_name
        shutil.rmtree(work_dir, ignore_errors=True)

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.core.files.storage import default_storage
from django.db import OperationalError
from PIL import Image

from ml.decode import DecodedImage
from ml.inference import ImageAnalysis
from ml.model_input import ModelInput
from portal.analyses import services
from portal.analyses.models import Analysis
from portal.analyses.services import scan_submit
from portal.clinical.uploads import validate_content
from tests.faults.harness import wait_until
from workers import tasks

pytestmark = pytest.mark.django_db
Status = Analysis.Status
TEST_MODEL_VERSION = "test-model-1"


def fake_result(image: Any, label: str = "benign") -> ImageAnalysis:
    """A real ImageAnalysis with made-up numbers, so storing it runs the real code."""
    mask = np.zeros((image.height, image.width), bool)
    mask[3:12, 2:10] = True
    heatmap = np.zeros((32, 32), np.float32)
    heatmap[8:16, 8:16] = 1.0
    return ImageAnalysis(
        label=label,
        probabilities={"normal": 0.1, "benign": 0.8, "malignant": 0.1},
        confidence=0.8,
        lesion_mask=mask,
        lesion_area_fraction=0.12,
        bbox=(2, 3, 10, 12),
        gradcam_map=heatmap,
        seg_gradcam_map=heatmap.T.copy(),
        model_version=TEST_MODEL_VERSION,
    )


@dataclass
class FakeAnalyzer:
    """Stands in for ml.inference.Analyzer at the task boundary (unit tests only)."""

    model_version: str = TEST_MODEL_VERSION
    image_size: int = 16
    fail_on_width: int | None = None
    error: Exception | None = None
    batches: list[int] = field(default_factory=list)
    images: list[Any] = field(default_factory=list)

    def analyze(self, images: list[Any], *, batch_size: int = 8) -> list[ImageAnalysis]:
        self.batches.append(len(images))
        self.images.extend(images)
        if self.error is not None:
            raise self.error
        if any(image.width == self.fail_on_width for image in images):
            raise ValueError("tensor shape mismatch")
        return [fake_result(image) for image in images]


@pytest.fixture
def analyzer(monkeypatch: pytest.MonkeyPatch) -> FakeAnalyzer:
    fake = FakeAnalyzer()
    monkeypatch.setattr(tasks, "get_analyzer", lambda version=None: fake)
    return fake


@pytest.fixture
def make_analysis(study, user, make_png):
    def make(
        width: int = 40, name: str = "scan.png", model_input_side: int | None = None
    ) -> Analysis:
        upload = validate_content(
            filename=name,
            content=make_png(width, 32),
            model_input_side=model_input_side,
        )
        scan = scan_submit(
            study=study,
            upload=upload,
            uploaded_by=user,
            model_version=TEST_MODEL_VERSION,
        )
        return scan.analyses.get()

    return make


def _deliver(analysis: Analysis, *others: Analysis) -> None:
    """Run the task on the analysis's message, then reload it and `others`."""
    tasks.analyze_scan.apply(args=[analysis.pk])
    for row in (analysis, *others):
        row.refresh_from_db()


def test_task_claims_runs_and_stores_results(make_analysis, analyzer):
    analysis = make_analysis()
    _deliver(analysis)
    assert analysis.status == Status.SUCCEEDED
    assert (analysis.label, analysis.confidence, analysis.attempts) == (
        "benign",
        0.8,
        1,
    )
    assert analysis.probabilities == {"normal": 0.1, "benign": 0.8, "malignant": 0.1}
    assert analysis.bbox == [2, 3, 10, 12]
    assert analysis.worker and analysis.started_at <= analysis.finished_at
    # The model's output, not pictures of it: a 1-bit mask and two small grey maps.
    for kind, mode, size in (
        ("mask", "1", (analysis.scan.width, analysis.scan.height)),
        ("gradcam_map", "L", (32, 32)),
        ("seg_gradcam_map", "L", (32, 32)),
    ):
        name = getattr(analysis, kind).name
        assert name == f"analyses/{analysis.pk}/{kind}.png"
        with default_storage.open(name, "rb") as stored, Image.open(stored) as image:
            assert (image.mode, image.size) == (mode, size)
            if kind == "mask":
                assert np.asarray(image)[3:12, 2:10].all()
                assert np.asarray(image).sum() == 9 * 8
    assert not (analysis.overlay or analysis.gradcam or analysis.seg_gradcam)


def test_duplicate_message_for_a_finished_analysis_does_nothing(
    make_analysis, analyzer
):
    analysis = make_analysis()
    tasks.analyze_scan.apply(args=[analysis.pk])
    finished = Analysis.objects.get(pk=analysis.pk)
    tasks.analyze_scan.apply(args=[analysis.pk])
    again = Analysis.objects.get(pk=analysis.pk)
    assert analyzer.batches == [1]
    assert (again.attempts, again.finished_at, again.mask.name) == (
        finished.attempts,
        finished.finished_at,
        finished.mask.name,
    )


def test_message_for_an_analysis_claimed_elsewhere_does_nothing(
    make_analysis, analyzer
):
    analysis = make_analysis()
    services.analysis_claim(analysis_id=analysis.pk, worker="other-worker")
    _deliver(analysis)
    assert (analysis.status, analysis.worker) == (Status.RUNNING, "other-worker")
    assert analyzer.batches == []


def test_message_for_a_missing_analysis_does_nothing(analyzer):
    tasks.analyze_scan.apply(args=[987654])
    assert analyzer.batches == []


def test_waiting_analyses_are_claimed_and_run_in_batches(
    make_analysis, analyzer, settings
):
    settings.ANALYSIS_BATCH_SIZE = 3
    analyses = [make_analysis(name=f"{i}.png") for i in range(4)]
    tasks.analyze_scan.apply(args=[analyses[0].pk])
    assert analyzer.batches == [3, 1]
    statuses = Analysis.objects.filter(pk__in=[a.pk for a in analyses]).values_list(
        "status", flat=True
    )
    assert set(statuses) == {Status.SUCCEEDED}
    # The batched rows' own messages arrive later and find nothing to do.
    tasks.analyze_scan.apply(args=[analyses[1].pk])
    assert analyzer.batches == [3, 1]


def test_no_more_batches_are_claimed_after_half_the_time_limit(
    make_analysis, analyzer, settings
):
    settings.ANALYSIS_BATCH_SIZE = 1
    settings.CELERY_TASK_SOFT_TIME_LIMIT = 0
    first, second = make_analysis(name="1.png"), make_analysis(name="2.png")
    tasks.analyze_scan.apply(args=[first.pk])
    second.refresh_from_db()
    assert analyzer.batches == [1]
    assert second.status == Status.QUEUED


@pytest.mark.django_db(transaction=True)
def test_results_are_recorded_by_finishing_threads(make_analysis, analyzer, settings):
    settings.ANALYSIS_RENDER_THREADS = 2
    settings.ANALYSIS_BATCH_SIZE = 2
    analyses = [make_analysis(name=f"{i}.png") for i in range(5)]
    connected = _other_connections()  # other tests' threads may hold some
    tasks.analyze_scan.apply(args=[analyses[0].pk])
    assert analyzer.batches == [2, 2, 1]
    for analysis in analyses:
        analysis.refresh_from_db()
        assert analysis.status == Status.SUCCEEDED
        assert analysis.mask.name == f"analyses/{analysis.pk}/mask.png"
    # The threads kept their connections from batch to batch, and closed them at the end.
    # A closed connection's backend leaves pg_stat_activity a moment after the client
    # closes it (later on a loaded machine): wait for it, a few seconds at most; a
    # connection left open never leaves.
    wait_until(
        lambda: _other_connections() <= connected,
        timeout=5,
        interval=0.1,
        what="the finishing threads' connections to close",
    )


def _other_connections() -> int:
    """Open connections to this database other than this thread's (PostgreSQL only)."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("counts connections in pg_stat_activity")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


def test_model_error_fails_only_the_bad_image_with_its_reason(make_analysis, analyzer):
    good = make_analysis(width=40, name="good.png")
    bad = make_analysis(width=41, name="bad.png")
    analyzer.fail_on_width = 41
    _deliver(good, bad)
    assert good.status == Status.SUCCEEDED
    assert bad.status == Status.FAILED
    assert "tensor shape mismatch" in bad.error
    assert bad.finished_at is not None


def test_model_that_cannot_load_fails_the_analysis_with_the_reason(
    make_analysis, monkeypatch
):
    def broken(version: str | None = None) -> None:
        raise RuntimeError("weights file model.weights.h5 is missing")

    monkeypatch.setattr(tasks, "get_analyzer", broken)
    analysis = make_analysis()
    _deliver(analysis)
    assert analysis.status == Status.FAILED
    assert "model could not be loaded" in analysis.error
    assert "model.weights.h5" in analysis.error


def test_analysis_for_another_model_version_fails_and_says_why(make_analysis, analyzer):
    analysis = make_analysis()
    analyzer.model_version = "test-model-2"
    _deliver(analysis)
    assert analysis.status == Status.FAILED
    assert "test-model-2" in analysis.error


def test_transient_error_requeues_with_backoff(make_analysis, analyzer, enqueued):
    analysis = make_analysis()
    analyzer.error = OSError("storage unavailable")
    enqueued.clear()
    _deliver(analysis)
    assert analysis.status == Status.QUEUED
    assert "storage unavailable" in analysis.error
    assert enqueued == [(analysis.pk, services.retry_countdown(1))]


def test_transient_errors_stop_after_the_attempt_limit(
    make_analysis, analyzer, enqueued, settings
):
    settings.ANALYSIS_MAX_ATTEMPTS = 2
    analysis = make_analysis()
    analyzer.error = OperationalError("server closed the connection")
    for _ in range(3):
        tasks.analyze_scan.apply(args=[analysis.pk])
    analysis.refresh_from_db()
    assert analysis.status == Status.FAILED
    assert analysis.attempts == 2
    assert "gave up after 2 attempts" in analysis.error
    assert len(analyzer.batches) == 2


def test_unreadable_stored_scan_fails_with_reason(make_analysis, analyzer):
    analysis = make_analysis()
    with default_storage.open(analysis.scan.original.name, "wb") as stored:
        stored.write(b"corrupted on disk")
    _deliver(analysis)
    assert analysis.status == Status.FAILED
    assert "stored scan could not be decoded" in analysis.error


def test_unexpected_error_is_recorded_not_left_running(
    make_analysis, analyzer, monkeypatch
):
    analysis = make_analysis()

    def explode(analyzer: Any, work: list[Any]) -> list[Any]:
        raise KeyError("bug")

    monkeypatch.setattr(tasks, "_analyze", explode)
    _deliver(analysis)
    assert analysis.status == Status.FAILED
    assert "internal error" in analysis.error


def _no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def decode(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the worker decoded a scan")

    monkeypatch.setattr(tasks, "decode_image", decode)


def test_the_worker_reads_the_stored_model_input_and_decodes_nothing(
    make_analysis, analyzer, monkeypatch
):
    analysis = make_analysis(width=40, model_input_side=analyzer.image_size)
    assert analysis.scan.model_input.name.endswith("-input.npy")
    _no_decoding(monkeypatch)
    _deliver(analysis)
    assert analysis.status == Status.SUCCEEDED
    (image,) = analyzer.images
    assert isinstance(image, ModelInput)
    assert image.pixels.shape == (16, 16, 3)
    assert (image.width, image.height) == (40, 32)
    assert analysis.mask  # at the scan's own size (test_task_claims_runs_...)


def test_a_scan_stored_without_a_model_input_is_decoded(make_analysis, analyzer):
    analysis = make_analysis(width=40)
    assert not analysis.scan.model_input
    _deliver(analysis)
    assert analysis.status == Status.SUCCEEDED
    (image,) = analyzer.images
    assert isinstance(image, DecodedImage)
    assert (image.width, image.height) == (40, 32)


@pytest.mark.parametrize("why", ["another model size", "lost from storage"])
def test_an_unusable_model_input_gives_way_to_the_decoded_scan(
    make_analysis, analyzer, why
):
    side = analyzer.image_size * 2 if why == "another model size" else None
    analysis = make_analysis(width=40, model_input_side=side or analyzer.image_size)
    if why == "lost from storage":
        default_storage.delete(analysis.scan.model_input.name)
    _deliver(analysis)
    assert analysis.status == Status.SUCCEEDED
    (image,) = analyzer.images
    assert isinstance(image, DecodedImage)
    assert (image.width, image.height) == (40, 32)


def test_a_scan_storage_cannot_read_is_requeued_and_the_rest_still_run(
    make_analysis, analyzer, monkeypatch, enqueued
):
    readable, unreadable = make_analysis(name="ok.png"), make_analysis(name="gone.png")
    real_load_scan = tasks._load_scan

    def flaky(analysis: Analysis, model: Any) -> Any:
        if analysis.pk == unreadable.pk:
            raise OSError("storage timed out")
        return real_load_scan(analysis, model)

    monkeypatch.setattr(tasks, "_load_scan", flaky)
    enqueued.clear()
    _deliver(readable, unreadable)
    assert readable.status == Status.SUCCEEDED
    assert unreadable.status == Status.QUEUED
    assert "storage timed out" in unreadable.error
    assert enqueued == [(unreadable.pk, services.retry_countdown(1))]


def test_analyzers_are_loaded_once_per_version_two_at_most(
    monkeypatch, settings, tmp_path
):
    import sys
    import types
    from collections import OrderedDict

    from ml.weights_io import read_meta
    from portal.analyses.modelinfo import ModelVersionUnavailable
    from tests.conftest import write_model_json
    from workers import analyzer as analyzer_module

    loads: list[str] = []

    class CountingAnalyzer:
        def __init__(self, version: str) -> None:
            self.model_version = version

        @classmethod
        def load(cls, weights_dir: Any) -> CountingAnalyzer:
            loads.append(Path(weights_dir).name)
            return cls(read_meta(weights_dir).version)

    fake_module = types.ModuleType("ml.inference")
    fake_module.Analyzer = CountingAnalyzer
    monkeypatch.setitem(sys.modules, "ml.inference", fake_module)
    monkeypatch.setattr(analyzer_module, "_analyzers", OrderedDict())
    settings.ML_WEIGHTS_DIR = tmp_path / "shipped"
    settings.ML_MODELS_DIR = tmp_path / "models"
    for folder, version in (
        (settings.ML_WEIGHTS_DIR, "v-shipped"),
        (settings.ML_MODELS_DIR / "v-a", "v-a"),
        (settings.ML_MODELS_DIR / "v-b", "v-b"),
    ):
        folder.mkdir(parents=True)
        write_model_json(folder, version)

    active = analyzer_module.get_analyzer()  # none promoted: the shipped one
    assert active.model_version == "v-shipped"
    assert analyzer_module.get_analyzer("v-shipped") is active
    assert analyzer_module.get_analyzer("v-a").model_version == "v-a"
    assert analyzer_module.get_analyzer("v-b").model_version == "v-b"
    # Two kept: the least recently used (the shipped one) went.
    assert analyzer_module.loaded_versions() == ["v-a", "v-b"]
    analyzer_module.get_analyzer("v-a")
    assert loads == ["shipped", "v-a", "v-b"]
    with pytest.raises(ModelVersionUnavailable, match="v-gone"):
        analyzer_module.get_analyzer("v-gone")


def test_a_database_error_while_claiming_more_requeues_the_claimed_row(
    make_analysis, analyzer, monkeypatch, enqueued
):
    analysis = make_analysis()

    def unavailable(**kwargs: Any) -> list[int]:
        raise OperationalError("could not connect to server")

    monkeypatch.setattr(services, "analysis_claim_waiting", unavailable)
    enqueued.clear()
    _deliver(analysis)
    assert analysis.status == Status.QUEUED
    assert enqueued == [(analysis.pk, services.retry_countdown(1))]


def test_task_stores_the_distribution_flag_and_the_explained_class(
    make_analysis, analyzer, monkeypatch
):
    def unfamiliar(images: list[Any], *, batch_size: int = 8) -> list[ImageAnalysis]:
        return [
            replace(
                fake_result(image),
                in_distribution=False,
                ood_score=88.5,
                explained_class="malignant",
            )
            for image in images
        ]

    monkeypatch.setattr(analyzer, "analyze", unfamiliar)
    analysis = make_analysis()
    _deliver(analysis)
    assert analysis.status == Status.SUCCEEDED
    assert (analysis.in_distribution, analysis.ood_score) == (False, 88.5)
    assert analysis.explained_class == "malignant"


def test_task_stores_the_logits_and_a_withheld_scan_without_its_verdict(
    make_analysis, analyzer, monkeypatch
):
    logits = np.array([0.25, -1.0, 2.5], np.float32)

    def gated(images: list[Any], *, batch_size: int = 8) -> list[ImageAnalysis]:
        return [
            replace(
                fake_result(image, label="malignant"),
                class_logits=logits,
                withheld=image.width == 41,
                gate_score=7.5 if image.width == 41 else 0.25,
            )
            for image in images
        ]

    monkeypatch.setattr(analyzer, "analyze", gated)
    photo, scan = make_analysis(width=41, name="photo.png"), make_analysis()
    _deliver(photo, scan)
    assert photo.status == scan.status == Status.SUCCEEDED
    assert photo.logits == scan.logits == pytest.approx(logits.tolist())
    assert (photo.withheld, photo.gate_score) == (True, 7.5)
    assert photo.label == "" and photo.probabilities is None
    assert photo.bbox is None and not photo.mask and not photo.gradcam_map
    assert (scan.withheld, scan.gate_score, scan.label) == (False, 0.25, "malignant")
    assert scan.mask and scan.suspicious is True


def test_a_result_that_cannot_be_stored_fails_alone_and_the_batch_is_kept(
    make_analysis, analyzer, monkeypatch, settings
):
    settings.ANALYSIS_BATCH_SIZE = 3
    analyses = [make_analysis(width=40 + i, name=f"{i}.png") for i in range(3)]

    def one_unstorable(
        images: list[Any], *, batch_size: int = 8
    ) -> list[ImageAnalysis]:
        # The model answers; the middle result has a label the portal does not know.
        return [
            replace(fake_result(image), label="x" * 500)
            if image.width == 41
            else fake_result(image)
            for image in images
        ]

    monkeypatch.setattr(analyzer, "analyze", one_unstorable)
    _deliver(*analyses)
    good, bad = [analyses[0], analyses[2]], analyses[1]
    assert [a.status for a in good] == [Status.SUCCEEDED, Status.SUCCEEDED]
    assert all(a.mask for a in good)
    assert bad.status == Status.FAILED
    assert bad.error.startswith("internal error: ValueError: label 'xxx")


def _set_shadow(tmp_path: Path, settings: Any, make_user: Any) -> str:
    """Install a model version and run it in shadow; its version."""
    from portal.registry.services import model_shadow_set, model_version_install
    from tests.portal.registry.test_model_versions import model_folder

    settings.ML_MODELS_DIR = tmp_path / "models"
    admin = make_user("administrator", "admin")
    record = model_version_install(
        source=model_folder(tmp_path / "made", "shadow"), installed_by=admin
    )
    model_shadow_set(model_version=record, user=admin, reason="compare")
    return record.version


def _shadow_analyzer(version: str, monkeypatch: pytest.MonkeyPatch) -> FakeAnalyzer:
    """The shadow's stand-in: its outline sits 4 columns right of the active one's
    (rows 3-11, columns 6-13 against 2-9: Dice 2 * 36 / (72 + 72) = 0.5)."""
    shadow = FakeAnalyzer(model_version=version)

    def shifted(images: list[Any], *, batch_size: int = 8) -> list[ImageAnalysis]:
        shadow.batches.append(len(images))
        results = []
        for image in images:
            mask = np.zeros((image.height, image.width), bool)
            mask[3:12, 6:14] = True
            results.append(replace(fake_result(image, "malignant"), lesion_mask=mask))
        return results

    monkeypatch.setattr(shadow, "analyze", shifted)
    monkeypatch.setattr(tasks, "get_analyzer", lambda version=None: shadow)
    return shadow


def test_the_shadow_run_scores_the_stored_mask_and_never_touches_the_analysis(
    make_analysis, analyzer, monkeypatch, settings, tmp_path, make_user
):
    from portal.analyses.models import ShadowResult

    analysis = make_analysis()
    _deliver(analysis)
    version = _set_shadow(tmp_path, settings, make_user)
    shown = Analysis.objects.values().get(pk=analysis.pk)
    shadow = _shadow_analyzer(version, monkeypatch)

    tasks.shadow_analyses.apply(args=[[analysis.pk], version])
    # The same message delivered again: no second model run, no second row.
    tasks.shadow_analyses.apply(args=[[analysis.pk], version])

    (row,) = ShadowResult.objects.filter(analysis=analysis)
    assert (row.model_version, row.label, row.error) == (version, "malignant", "")
    assert row.mask_dice == pytest.approx(0.5)
    assert shadow.batches == [1]
    assert Analysis.objects.values().get(pk=analysis.pk) == shown


def test_the_shadow_skips_analyses_not_shown_and_versions_no_longer_in_shadow(
    make_analysis, analyzer, monkeypatch, settings, tmp_path, make_user
):
    from portal.analyses.models import ShadowResult

    shown = make_analysis()
    _deliver(shown)
    waiting = make_analysis(name="waiting.png")
    version = _set_shadow(tmp_path, settings, make_user)
    shadow = _shadow_analyzer(version, monkeypatch)

    tasks.shadow_analyses.apply(args=[[shown.pk, waiting.pk], "another-version"])
    assert shadow.batches == []
    tasks.shadow_analyses.apply(args=[[shown.pk, waiting.pk], version])

    assert shadow.batches == [1]
    assert list(ShadowResult.objects.values_list("analysis", flat=True)) == [shown.pk]
    waiting.refresh_from_db()
    assert waiting.status == Status.QUEUED


def test_a_passing_fault_in_the_shadow_run_is_retried_and_nothing_is_lost(
    make_analysis, analyzer, monkeypatch, settings, tmp_path, make_user
):
    from portal.analyses.models import ShadowResult

    analysis = make_analysis()
    _deliver(analysis)
    version = _set_shadow(tmp_path, settings, make_user)
    _shadow_analyzer(version, monkeypatch)
    record = services.shadow_results_record
    calls: list[int] = []

    def flaky(**kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("the database restarted")
        record(**kwargs)

    monkeypatch.setattr(services, "shadow_results_record", flaky)
    tasks.shadow_analyses.apply(args=[[analysis.pk], version])

    assert len(calls) == 2
    assert ShadowResult.objects.filter(analysis=analysis).count() == 1


def test_a_failing_shadow_model_is_recorded_as_its_error_only(
    make_analysis, analyzer, monkeypatch, settings, tmp_path, make_user
):
    from portal.analyses.models import ShadowResult

    analysis = make_analysis()
    _deliver(analysis)
    version = _set_shadow(tmp_path, settings, make_user)
    shown = Analysis.objects.values().get(pk=analysis.pk)
    shadow = FakeAnalyzer(model_version=version, error=ValueError("bad tensor"))
    monkeypatch.setattr(tasks, "get_analyzer", lambda version=None: shadow)

    tasks.shadow_analyses.apply(args=[[analysis.pk], version])

    (row,) = ShadowResult.objects.filter(analysis=analysis)
    assert row.error == "ValueError: bad tensor" and row.label == ""
    assert Analysis.objects.values().get(pk=analysis.pk) == shown

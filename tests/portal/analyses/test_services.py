from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from portal.analyses import services
from portal.analyses.modelinfo import ModelVersionUnavailable, current_model_version
from portal.analyses.models import Analysis
from portal.analyses.reconciler import reconcile
from portal.analyses.services import scan_submit
from portal.clinical.uploads import validate_content
from tests.conftest import write_model_json
from tests.results import model_result, record_result

pytestmark = pytest.mark.django_db
Status = Analysis.Status
TEST_MODEL_VERSION = "test-model-1"


@pytest.fixture
def analysis(study, user, make_png):
    upload = validate_content(filename="a.png", content=make_png())
    scan = scan_submit(
        study=study, upload=upload, uploaded_by=user, model_version=TEST_MODEL_VERSION
    )
    return scan.analyses.get()


def test_model_version_comes_from_model_json(weights_dir):
    assert current_model_version() == TEST_MODEL_VERSION
    (weights_dir / "model.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(ModelVersionUnavailable, match="version"):
        current_model_version()
    (weights_dir / "model.json").unlink()
    with pytest.raises(ModelVersionUnavailable, match="does not exist"):
        current_model_version()


def test_model_json_is_read_by_the_same_rules_as_the_worker_loads_it(weights_dir):
    # ml.weights_io.read_meta refuses what the worker could not load: the portal must
    # not queue analyses for a model.json the worker will refuse.
    write_model_json(weights_dir, "test-model-3", class_head="no-such-head")
    with pytest.raises(ModelVersionUnavailable, match="class head"):
        current_model_version()
    (weights_dir / "model.json").write_text("[1, 2]")
    with pytest.raises(ModelVersionUnavailable, match="corrupt"):
        current_model_version()


def test_claim_is_a_compare_and_set(analysis):
    assert services.analysis_claim(analysis_id=analysis.pk, worker="w1")
    assert not services.analysis_claim(analysis_id=analysis.pk, worker="w2")
    analysis.refresh_from_db()
    assert (analysis.status, analysis.worker, analysis.attempts) == (
        Status.RUNNING,
        "w1",
        1,
    )
    assert analysis.started_at is not None


def test_claim_waiting_takes_a_batch_in_one_statement_and_leaves_taken_rows(
    study, user, make_png, django_assert_num_queries
):
    from django.db import connection

    waiting = [
        scan_submit(
            study=study,
            upload=validate_content(filename=f"{i}.png", content=make_png()),
            uploaded_by=user,
            model_version=TEST_MODEL_VERSION,
        ).analyses.get()
        for i in range(6)
    ]
    # Taken by another worker: not queued, not taken again.
    services.analysis_claim(analysis_id=waiting[1].pk, worker="other")
    # One UPDATE ... RETURNING on PostgreSQL; elsewhere pick, update, read back: three
    # queries for a batch of any size (a claim per row was one UPDATE each).
    with django_assert_num_queries(1 if connection.vendor == "postgresql" else 3):
        claimed = services.analysis_claim_waiting(
            model_version=TEST_MODEL_VERSION, worker="w", limit=5
        )
    assert claimed == [waiting[0].pk, *[a.pk for a in waiting[2:6]]]
    rows = Analysis.objects.in_bulk(claimed)
    assert {(r.status, r.worker, r.attempts) for r in rows.values()} == {
        (Analysis.Status.RUNNING, "w", 1)
    }
    assert Analysis.objects.get(pk=waiting[1].pk).worker == "other"


def test_one_analysis_per_scan_and_model_version(analysis):
    from django.db import IntegrityError

    with pytest.raises(IntegrityError):
        Analysis.objects.create(
            scan=analysis.scan, model_version=analysis.model_version
        )


def test_claim_waiting_takes_oldest_queued_of_the_same_model(
    study, user, make_png, analysis
):
    others = [
        scan_submit(
            study=study,
            upload=validate_content(filename=f"{i}.png", content=make_png()),
            uploaded_by=user,
            model_version=TEST_MODEL_VERSION,
        ).analyses.get()
        for i in range(3)
    ]
    other_model = Analysis.objects.create(scan=others[0].scan, model_version="old")
    services.analysis_claim(analysis_id=analysis.pk, worker="w")
    claimed = services.analysis_claim_waiting(
        model_version=TEST_MODEL_VERSION, worker="w", limit=2, exclude=[analysis.pk]
    )
    assert claimed == [others[0].pk, others[1].pk]
    other_model.refresh_from_db()
    assert other_model.status == Status.QUEUED


def test_record_success_stores_results_and_artifacts(analysis):
    assert record_result(
        analysis,
        bbox=(1, 2, 30, 40),
        artifacts={"mask": b"m", "overlay": b"o", "gradcam": b"g", "seg_gradcam": b"s"},
    )
    analysis.refresh_from_db()
    assert analysis.status == Status.SUCCEEDED
    assert analysis.bbox == [1, 2, 30, 40]
    assert analysis.overlay.name == f"analyses/{analysis.pk}/overlay.png"
    assert analysis.overlay.read() == b"o"


def test_record_success_stores_the_distribution_flag_score_threshold_and_cam_class(
    analysis, weights_dir
):
    write_model_json(weights_dir, TEST_MODEL_VERSION, ood_threshold=41.5)
    record_result(
        analysis, in_distribution=False, ood_score=97.25, explained_class="malignant"
    )
    analysis.refresh_from_db()
    assert analysis.in_distribution is False
    assert analysis.outside_training_distribution
    assert (analysis.ood_score, analysis.ood_threshold) == (97.25, 41.5)
    assert analysis.explained_class == "malignant"
    assert analysis.to_status_dict()["in_distribution"] is False


def test_a_model_without_distribution_statistics_leaves_the_flag_empty(analysis):
    record_result(analysis, in_distribution=None, ood_score=None)
    analysis.refresh_from_db()
    assert (analysis.in_distribution, analysis.ood_score, analysis.ood_threshold) == (
        None,
        None,
        None,
    )
    assert not analysis.outside_training_distribution


def test_the_threshold_of_other_installed_weights_is_not_kept(analysis, weights_dir):
    write_model_json(weights_dir, "another-model", ood_threshold=41.5)
    record_result(analysis, in_distribution=True, ood_score=3.0)
    analysis.refresh_from_db()
    assert (analysis.in_distribution, analysis.ood_score) == (True, 3.0)
    assert analysis.ood_threshold is None


def test_record_success_does_nothing_for_a_row_that_is_not_running(analysis):
    assert not services.analysis_record_success(
        analysis_id=analysis.pk, result={}, artifacts={}
    )


def test_release_requeues_until_attempts_run_out(analysis, settings):
    settings.ANALYSIS_MAX_ATTEMPTS = 2
    services.analysis_claim(analysis_id=analysis.pk, worker="w")
    assert services.analysis_release(analysis_id=analysis.pk, error="disk full")
    analysis.refresh_from_db()
    assert (analysis.status, analysis.error) == (Status.QUEUED, "disk full")
    services.analysis_claim(analysis_id=analysis.pk, worker="w")
    assert not services.analysis_release(analysis_id=analysis.pk, error="disk full")
    analysis.refresh_from_db()
    assert analysis.status == Status.FAILED
    assert "gave up after 2 attempts" in analysis.error


def test_release_without_counting_undoes_the_claim(analysis):
    services.analysis_claim(analysis_id=analysis.pk, worker="w")
    assert services.analysis_release(
        analysis_id=analysis.pk, error="", count_attempt=False
    )
    analysis.refresh_from_db()
    assert (analysis.status, analysis.attempts, analysis.worker) == (
        Status.QUEUED,
        0,
        "",
    )


def test_retry_requeues_a_failed_analysis_of_the_current_model(
    analysis, django_capture_on_commit_callbacks, enqueued
):
    services.analysis_claim(analysis_id=analysis.pk, worker="w")
    services.analysis_record_failure(analysis_id=analysis.pk, error="bad")
    enqueued.clear()
    with django_capture_on_commit_callbacks(execute=True):
        retried = services.analysis_retry(analysis=analysis)
    assert retried.pk == analysis.pk
    assert (retried.status, retried.error, retried.attempts) == (Status.QUEUED, "", 0)
    assert enqueued == [(analysis.pk, None)]


def test_retry_with_a_new_model_keeps_the_old_analysis(analysis, weights_dir):
    services.analysis_claim(analysis_id=analysis.pk, worker="w")
    services.analysis_record_failure(analysis_id=analysis.pk, error="bad")
    write_model_json(weights_dir, "test-model-2")
    retried = services.analysis_retry(analysis=analysis)
    assert retried.pk != analysis.pk
    assert retried.model_version == "test-model-2"
    analysis.refresh_from_db()
    assert analysis.status == Status.FAILED


def test_retry_of_a_running_analysis_does_nothing(analysis, enqueued):
    services.analysis_claim(analysis_id=analysis.pk, worker="w")
    enqueued.clear()
    services.analysis_retry(analysis=analysis)
    analysis.refresh_from_db()
    assert analysis.status == Status.RUNNING
    assert enqueued == []


def test_reconcile_requeues_lost_running_rows_and_resends_old_queued_ones(
    analysis, study, user, make_png, settings, enqueued
):
    services.analysis_claim(analysis_id=analysis.pk, worker="dead")
    long_ago = timezone.now() - timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT * 3)
    Analysis.objects.filter(pk=analysis.pk).update(heartbeat_at=long_ago)
    waiting = scan_submit(
        study=study,
        upload=validate_content(filename="b.png", content=make_png()),
        uploaded_by=user,
        model_version=TEST_MODEL_VERSION,
    ).analyses.get()
    Analysis.objects.filter(pk=waiting.pk).update(queued_at=long_ago)
    enqueued.clear()

    counts = reconcile().counts()

    assert counts == {"requeued": 1, "failed": 0, "resent": 1}
    assert sorted(pk for pk, _ in enqueued) == sorted([analysis.pk, waiting.pk])
    analysis.refresh_from_db()
    assert analysis.status == Status.QUEUED
    assert reconcile().counts() == {"requeued": 0, "failed": 0, "resent": 0}


def test_a_batch_is_stored_together_and_its_studies_recounted_in_one_update(
    study, patient, user, make_png
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from portal.clinical.services import study_create

    other_study = study_create(patient=patient, created_by=user, accession_number="B")
    analyses = []
    for index, target in enumerate([study, study, study, other_study]):
        upload = validate_content(filename=f"{index}.png", content=make_png())
        scan = scan_submit(
            study=target,
            upload=upload,
            uploaded_by=user,
            model_version=TEST_MODEL_VERSION,
        )
        analyses.append(scan.analyses.get())
    for analysis in analyses:
        services.analysis_claim(analysis_id=analysis.pk, worker="w")
    taken = analyses[2]
    services.analysis_record_failure(analysis_id=taken.pk, error="no longer ours")
    result = model_result(
        label="malignant",
        probabilities={"normal": 0.1, "benign": 0.2, "malignant": 0.7},
    )
    with CaptureQueriesContext(connection) as queries:
        recorded = services.analyses_record_success(
            results=[(a.pk, result, {"mask": b"m"}) for a in analyses]
        )
    assert recorded == [analyses[0].pk, analyses[1].pk, analyses[3].pk]
    study_updates = [
        q["sql"] for q in queries if q["sql"].startswith('UPDATE "clinical_study"')
    ]
    # One for the batch's studies, not one per study or per scan.
    assert len(study_updates) == 1
    assert study_updates[0].endswith(
        f'WHERE "clinical_study"."id" IN ({study.pk}, {other_study.pk})'
    )
    row_updates = [
        q["sql"] for q in queries if q["sql"].startswith('UPDATE "analyses_analysis"')
    ]
    assert len(row_updates) == 1  # the batch's rows in one statement
    for analysis in analyses:
        analysis.refresh_from_db()
    assert [a.status for a in analyses] == [
        Status.SUCCEEDED,
        Status.SUCCEEDED,
        Status.FAILED,
        Status.SUCCEEDED,
    ]
    study.refresh_from_db()
    other_study.refresh_from_db()
    assert study.max_malignant == other_study.max_malignant == 0.7

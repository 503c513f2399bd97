from __future__ import annotations

from portal.analyses import queue
from workers import app
from workers.tasks import analyze_scan


def test_analysis_task_acks_late_and_requeues_when_the_worker_dies():
    assert analyze_scan.acks_late is True
    assert analyze_scan.reject_on_worker_lost is True


def test_the_workers_run_the_tasks_the_portal_sends_by_name():
    assert app is queue.app
    assert analyze_scan.name == queue.ANALYZE_SCAN
    assert queue.ANALYZE_SCAN in app.tasks


def test_only_json_and_one_message_at_a_time():
    conf = app.conf
    assert conf.task_serializer == "json"
    assert conf.accept_content == ["json"]
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_soft_time_limit < conf.task_time_limit
    assert conf.task_time_limit < conf.broker_transport_options["visibility_timeout"]


def test_a_worker_without_queue_options_consumes_the_inference_queue_too(settings):
    # `celery -A workers worker` with no -Q consumes the declared queues (task_queues).
    # Read from the configuration: app.amqp.queues also gains every queue a message was
    # sent to in this process (other tests send to queues of their own).
    declared = set(app.conf.task_queues)
    assert declared == {settings.CELERY_INFERENCE_QUEUE, "celery"}
    # One model per worker process unless asked (Celery's default is one per CPU).
    assert app.conf.worker_concurrency == 1

from __future__ import annotations

from typing import Any

import pytest

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
    declared = list(app.conf.task_queues)
    assert declared == [
        settings.CELERY_INFERENCE_QUEUE,
        "celery",
        settings.CELERY_SHADOW_QUEUE,
    ]
    # One model per worker process unless asked (Celery's default is one per CPU).
    assert app.conf.worker_concurrency == 1


def test_a_worker_takes_a_waiting_analysis_before_a_shadow_run_sent_earlier(settings):
    """The shadow's messages go at Redis's lowest priority: a worker consuming both
    queues (in either order) takes every analysis first."""
    import uuid

    import redis
    from kombu import Consumer, Queue

    from bench.launch import redis_url_with_db
    from tests.e2e.conftest import E2E_REDIS_DB, redis_reachable
    from workers.tasks import SHADOW_PRIORITY, shadow_analyses

    url = redis_url_with_db(settings.REDIS_URL, E2E_REDIS_DB)
    if not redis_reachable(url):
        pytest.skip(f"Redis is not reachable at {url}")
    run = uuid.uuid4().hex[:12]
    shadow, inference = f"shadow-order-{run}", f"inference-order-{run}"
    taken: list[str] = []

    def take(body: object, message: Any) -> None:
        taken.append(message.headers["task"])
        message.ack()

    try:
        with app.connection(url) as connection:
            shadow_analyses.apply_async(
                args=[[1], "v"],
                queue=shadow,
                priority=SHADOW_PRIORITY,
                connection=connection,
            )
            app.send_task(
                queue.ANALYZE_SCAN, args=[1], queue=inference, connection=connection
            )
            queues = [Queue(n, exchange=n, routing_key=n) for n in (shadow, inference)]
            with Consumer(
                connection.default_channel, queues, callbacks=[take], prefetch_count=1
            ):
                while len(taken) < 2:
                    connection.drain_events(timeout=10)
    finally:
        client = redis.Redis.from_url(url)
        client.delete(
            *(f"{name}\x06\x16{p}" for name in (shadow, inference) for p in (3, 6, 9)),
            *(
                f"_kombu.{kind}.{name}"
                for name in (shadow, inference)
                for kind in ("binding", "binding_permanent")
            ),
            shadow,
            inference,
        )
        client.close()
    assert taken == [queue.ANALYZE_SCAN, shadow_analyses.name]
